"""YAML -> a frozen, fully validated Config. Every error names the file, the line and the key.

Loading is all or nothing: ``load_config`` either returns a Config whose clients' options were
validated by their plugins and whose regexes are compiled, or raises ConfigError listing every
problem it found (not only the first). It reads files, so call it off the event loop.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, field_validator

from .durations import Duration
from .events import ROUTES
from .hookregex import DEFAULT_TIME_LIMIT, HookPattern, TimeLimit, compile_hook_regex
from .plugins import PluginRegistry
from .sizes import Size, format_size
from .storage.postgresql import PostgresTarget, StorageURLError, parse_storage_url
from .templates import MessageTemplates, TemplateError, check_template
from .wording import plural

Path_ = tuple[str | int, ...]

DEFAULT_LISTEN = "127.0.0.1:8970"


# --- problems -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """An invalid configuration; ``problems`` lists everything wrong with it."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def format_key(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def closest(word: str, choices: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the nearest choice, or ''."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not match:
        lower = {c.lower(): c for c in choices}
        if word.lower() in lower:
            match = [lower[word.lower()]]
    return f"; did you mean {match[0]!r}?" if match else ""


class _Collector:
    """Gathers problems against one file, placing each key on its line."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Path_, int] = {}
        self.problems: list[Problem] = []
        self.file_values: set[str] = set()
        """Values read through ${file:...}: credentials by convention, redacted from logs."""
        self.need_credentials = True
        """False for the operator commands that deliver nothing (see ``load_config``)."""
        self.unresolved: list[tuple[Path_, Problem]] = []
        """${...} that could not be resolved where the command does not need the value."""

    def line_of(self, path: Path_) -> int | None:
        path = tuple(path)
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path)

    def add(self, path: Path_, message: str) -> None:
        self.problems.append(Problem(self.file, self.line_of(path), format_key(path), message))

    def unresolvable(self, path: Path_, message: str) -> None:
        """A ${...} that cannot be resolved: a problem, unless the command does not use the value."""
        if self.need_credentials or not _is_credential_path(path):
            self.add(path, message)
        else:
            self.unresolved.append((path, Problem(self.file, self.line_of(path), format_key(path), message)))


def _is_credential_path(path: Path_) -> bool:
    """The values only delivering uses: a client's plugin options, and the intake's secret (which
    ``figrelay send`` checks itself, to say what is missing and that --secret can stand in)."""
    if path[:1] == ("clients",) and len(path) >= 3:
        return path[2] not in CORE_CLIENT_KEYS
    return path[:2] in (("intake", "secret"), ("intake", "hashed_secret"))


# --- YAML with line numbers and ${...} substitution -------------------------------------------

_SUBST = re.compile(r"\$\$|\$\{((?:[^{}]|\$\{[^{}]*\})*)\}")
"""``$$``, or ``${...}`` holding at most one nested ``${VAR}`` (``${file:${CREDENTIALS_DIRECTORY}/x}``)."""
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Unresolved(Exception):
    """A ${...} whose value cannot be had here; the message says which and how to provide it."""


class _Malformed(Exception):
    """A ${...} that is not a reference at all: a typo, always an error."""


CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"
_CREDENTIALS_HELP = 'see "Secrets as systemd credentials" in docs/operations.md'


def _env_reference(expr: str) -> str:
    name, sep, default = expr.partition(":-")
    if not _ENV_NAME.fullmatch(name):
        raise _Malformed(f"'${{{expr}}}' is not a variable reference: use ${{NAME}}, ${{NAME:-default}} or ${{file:PATH}} (write $$ for a literal $)")
    value = os.environ.get(name)
    if value is not None and (value or not sep):
        return value
    if sep:
        return default
    raise _Unresolved(f"environment variable {name} is not set (set it, or give a default: ${{{name}:-value}})")


def _credential_name(spec: str) -> str | None:
    """'slack-url' for ``${CREDENTIALS_DIRECTORY}/slack-url``: the name of a systemd credential."""
    m = re.fullmatch(r"\$\{\s*" + CREDENTIALS_ENV + r"\s*\}/([^/]+)", spec)
    return m.group(1) if m else None


def _file_reference(spec: str, base_dir: Path, out: _Collector) -> str:
    credential = _credential_name(spec)
    try:
        inner = _SUBST.sub(lambda m: "$" if m.group(0) == "$$" else _env_reference(m.group(1).strip()), spec)
    except _Unresolved as exc:
        if credential is not None and CREDENTIALS_ENV not in os.environ:
            # The documented server layout: systemd sets the variable for the service only.
            raise _Unresolved(
                f"${{file:{spec}}} is a systemd credential, but {CREDENTIALS_ENV} is not set: systemd sets it only for the "
                f"service (LoadCredential={credential}:/etc/figrelay/credentials/{credential} in the unit). From a shell, run the command "
                f"through `sudo systemd-run --pipe --wait --quiet -p LoadCredential={credential}:/etc/figrelay/credentials/{credential} "
                f"/opt/figrelay/venv/bin/figrelay ...`, or set {CREDENTIALS_ENV} to a folder that holds {credential!r} ({_CREDENTIALS_HELP})"
            ) from None
        raise _Unresolved(f"${{file:{spec}}}: {exc}") from None
    target = Path(os.path.expanduser(inner))
    if not target.is_absolute():
        target = base_dir / target
    try:
        content = target.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        hint = ""
        if credential is not None:
            hint = (
                f" (the unit needs LoadCredential={credential}:/etc/figrelay/credentials/{credential}: "
                f"`systemctl edit figrelay`; {_CREDENTIALS_HELP})"
            )
        raise _Unresolved(f"cannot read {target} for ${{file:...}}: {reason}{hint}") from None
    out.file_values.add(content)
    return content


def _substitute(text: str, path: Path_, base_dir: Path, out: _Collector) -> str:
    # "$2a$11$..." bcrypt hashes hold lone '$' signs: only "${" and "$$" are special.
    if "${" not in text and "$$" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        expr = m.group(1).strip()
        try:
            if expr.startswith("file:"):
                return _file_reference(expr[5:].strip(), base_dir, out)
            return _env_reference(expr)
        except _Unresolved as exc:
            out.unresolvable(path, str(exc))
        except _Malformed as exc:
            out.add(path, str(exc))
        return ""

    return _SUBST.sub(one, text)


_STR_TAG = "tag:yaml.org,2002:str"


def _to_python(node: yaml.Node, loader: Any, path: Path_, base_dir: Path, out: _Collector) -> Any:
    if isinstance(node, yaml.ScalarNode):
        if path not in out.lines:
            out.lines[path] = node.start_mark.line + 1
        # a text is the node's value as it is (what SafeConstructor.construct_yaml_str returns)
        value = node.value if node.tag == _STR_TAG else loader.construct_object(node)
        if isinstance(value, str) and "$" in value:
            value = _substitute(value, path, base_dir, out)
        return value
    out.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                out.lines[path] = key_node.start_mark.line + 1
                out.add(path, "a key must be a plain word, not a list or mapping")
                continue
            key = key_node.value if key_node.tag == _STR_TAG else str(loader.construct_object(key_node))
            child = (*path, key)
            out.lines[child] = key_node.start_mark.line + 1
            if key in result:
                out.add(child, "this key appears twice in the same mapping; keep one")
                continue
            result[key] = _to_python(value_node, loader, child, base_dir, out)
        return result
    return [_to_python(item, loader, (*path, i), base_dir, out) for i, item in enumerate(node.value)]


_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", None)
"""PyYAML's libyaml binding, when installed: a 10,000-hook file reads in a fraction of the time."""


_LIBYAML_ONLY = re.compile(r"(?:^|[ \t])[|>][-+0-9]*#", re.MULTILINE)
"""A block scalar's indicator followed by '#' with no space: a comment to libyaml, an error to PyYAML."""


class _Fallback(Exception):
    """The fast reading cannot give the same result as PyYAML's own: read the file the slow way."""


def _read_events(loader: Any, base_dir: Path, out: _Collector) -> Any:
    """The document read straight from libyaml's events, without a node tree: the same values,
    lines and problems as ``_to_python`` on the composed node. Raises _Fallback for what it does
    not handle (anchors and aliases, several documents) and YAMLError for an invalid file."""
    get = loader.get_event
    resolve = loader.resolve
    lines = out.lines
    tags: dict[tuple[str, Any], str] = {}  # plain scalars repeat (keys, event names): resolve each once

    def scalar(event: yaml.ScalarEvent) -> Any:
        tag = event.tag
        if tag == "!":
            raise _Fallback  # the non-specific tag: libyaml and PyYAML resolve it differently
        if tag is None:
            key = (event.value, event.implicit)
            tag = tags.get(key)
            if tag is None:
                tag = tags[key] = resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == _STR_TAG:
            return event.value
        return loader.construct_object(yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style))

    def skip(event: yaml.Event) -> None:
        """Consume a value that is not read (after a duplicate key): a composer registers its
        anchors all the same."""
        depth = 0
        while True:
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise _Fallback
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
            if depth == 0:
                return
            event = get()

    def value(event: yaml.Event, path: Path_) -> Any:
        if isinstance(event, yaml.AliasEvent) or event.anchor is not None:
            raise _Fallback
        if path not in lines:
            lines[path] = event.start_mark.line + 1
        kind = type(event)
        if kind is yaml.ScalarEvent:
            result = scalar(event)  # type: ignore[arg-type]
            if isinstance(result, str) and "$" in result:
                result = _substitute(result, path, base_dir, out)
            return result
        if kind is yaml.MappingStartEvent:
            mapping: dict[str, Any] = {}
            while True:
                key_event = get()
                if type(key_event) is yaml.MappingEndEvent:
                    return mapping
                if isinstance(key_event, yaml.AliasEvent) or key_event.anchor is not None:
                    raise _Fallback
                if type(key_event) is not yaml.ScalarEvent:
                    lines[path] = key_event.start_mark.line + 1
                    out.add(path, "a key must be a plain word, not a list or mapping")
                    skip(key_event)
                    skip(get())
                    continue
                key = scalar(key_event)  # type: ignore[arg-type]
                key = key if type(key) is str else str(key)
                child = (*path, key)
                lines[child] = key_event.start_mark.line + 1
                if key in mapping:
                    out.add(child, "this key appears twice in the same mapping; keep one")
                    skip(get())
                    continue
                mapping[key] = value(get(), child)
        if kind is yaml.SequenceStartEvent:
            items: list[Any] = []
            while True:
                item = get()
                if type(item) is yaml.SequenceEndEvent:
                    return items
                items.append(value(item, (*path, len(items))))
        raise _Fallback

    get()  # the stream's start
    if isinstance(get(), yaml.StreamEndEvent):
        raise _Fallback  # empty: said as ever
    document = value(get(), ())
    get()  # the document's end
    if not isinstance(get(), yaml.StreamEndEvent):
        raise _Fallback  # another document: PyYAML says so
    return document


def _read_yaml(text: str, file: str, base_dir: Path, out: _Collector) -> Any:
    if _FAST_LOADER is not None and "\t" not in text and not _LIBYAML_ONLY.search(text):
        # libyaml's events first. What they do not give exactly as PyYAML would (anchors and
        # aliases, the tag '!', several documents, an empty file) and a file libyaml refuses, or a
        # value PyYAML could not construct, is read again by PyYAML itself, afresh: its wording of
        # a problem is what the hints below know. PyYAML refuses some text libyaml takes (a tab
        # inside a plain value, '>#'): such a file is read by PyYAML alone, refused as ever.
        saved = (dict(out.lines), len(out.problems), set(out.file_values), len(out.unresolved))
        try:
            fast = _FAST_LOADER(text)
        except ValueError:  # a text libyaml cannot take, such as a lone surrogate
            fast = None
        if fast is not None:
            try:
                return _read_events(fast, base_dir, out)
            except (_Fallback, yaml.YAMLError, ValueError):
                out.lines.clear()
                out.lines.update(saved[0])
                del out.problems[saved[1] :]
                out.file_values.intersection_update(saved[2])
                del out.unresolved[saved[3] :]
            finally:
                fast.dispose()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        out.problems.append(Problem(file, line, "", f"not valid YAML: {what}{_yaml_hint(exc, text)}"))
        return None
    except yaml.YAMLError as exc:
        out.problems.append(Problem(file, None, "", f"not valid YAML: {exc}"))
        return None
    finally:
        loader.dispose()
    if node is None:
        out.problems.append(Problem(file, None, "", _EMPTY))
        return None
    return _to_python(node, loader, (), base_dir, out)


def _yaml_hint(exc: yaml.MarkedYAMLError, text: str) -> str:
    """What to do about the YAML mistakes people make in a config file; PyYAML only says what it met."""
    problem, context = exc.problem or "", exc.context or ""
    if "'\\t'" in problem or "tab" in problem:
        return "; use spaces for indentation, not tabs (YAML does not allow a tab there)"
    # an unquoted value that starts with '*' (a regex such as *Api) is read as an alias to an &anchor
    mark = exc.context_mark if "alias" in context else exc.problem_mark if "alias" in problem else None
    if mark is None:
        return ""
    lines = text.splitlines()
    line = lines[mark.line] if mark.line < len(lines) else ""
    value = re.split(r"\s+#", line[mark.column :], maxsplit=1)[0].strip()
    if "{" in line[: mark.column] or "[" in line[: mark.column]:  # in a flow mapping or list
        value = re.split(r"[,}\]]", value, maxsplit=1)[0].strip()
    quoted = "'" + value.replace("'", "''") + "'"
    return f"; a value that starts with '*' is a YAML alias: quote it: {quoted}"


_EMPTY = (
    "the file is empty (nothing but blanks or comments); a configuration needs at least 'clients' and 'hooks'. "
    "Was it read half-written? Write the new file beside it and rename it into place (see docs/operations.md)"
)


# --- values -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Listener:
    """One address the intake listens on: TCP ``host:port`` or ``unix:/path``."""

    host: str | None = None
    port: int | None = None
    unix_path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Listener:
        text = text.strip()
        if text.startswith("unix:"):
            path = text[5:]
            if not path:
                raise ValueError("unix: needs a socket path, e.g. unix:/run/figrelay/intake.sock")
            return cls(unix_path=path)
        host, sep, port_text = text.rpartition(":")
        if not sep or not port_text.isdigit():
            raise ValueError(f"{text!r} is not host:port or unix:/path (e.g. 127.0.0.1:8970)")
        host = host.strip("[]")
        port = int(port_text)
        if port > 65535:
            raise ValueError(f"port {port} is out of range (0-65535)")
        return cls(host=host or "0.0.0.0", port=port)

    @property
    def is_local(self) -> bool:
        """True for a unix socket or a loopback address: only this machine can reach it."""
        if self.unix_path is not None:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"[{self.host}]:{self.port}" if ":" in (self.host or "") else f"{self.host}:{self.port}"


_BCRYPT_HASH = re.compile(r"\$2[abxy]\$\d{2}\$[./A-Za-z0-9]{53}")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IntakeSettings(_Strict):
    hashed_secret: SecretStr | None = None
    secret: SecretStr | None = None
    forward_test_events: bool = False
    regex_timeout: TimeLimit = DEFAULT_TIME_LIMIT
    """CPU time one hook's regexes may take on one event; past it the event becomes a dead letter."""
    max_body_bytes: int = 1024 * 1024
    header_timeout: Duration = 10.0
    """A request line and headers that take longer get 408 and the connection is closed."""
    body_timeout: Duration = 30.0
    """A request body that takes longer in all (a Content-Length longer than the body) gets 408."""
    max_connections: int = 1000
    """Connections open at once; more are refused with 503. Capped by the open-file limit."""

    @field_validator("hashed_secret")
    @classmethod
    def _bcrypt(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not _BCRYPT_HASH.fullmatch(v.get_secret_value().strip()):
            raise ValueError("is not a BCrypt hash; paste the 60-character '$2a$11$...' text Fig's web app shows, or use 'secret:' for the plain secret")
        return v

    @field_validator("max_body_bytes")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1024:
            raise ValueError("must be at least 1024 bytes")
        return v

    @field_validator("header_timeout", "body_timeout")
    @classmethod
    def _read_timeout(cls, v: float) -> float:
        if not 0 < v <= 600:
            raise ValueError("must be more than 0 and at most 10m")
        return v

    @field_validator("max_connections")
    @classmethod
    def _connections(cls, v: int) -> int:
        if not 1 <= v <= 1_000_000:
            raise ValueError("must be between 1 and 1000000")
        return v


class DeliverySettings(_Strict):
    max_age: Duration = 24 * 3600
    """A delivery still failing this long after it was accepted becomes a dead letter."""
    backoff_base: Duration = 2.0
    backoff_max: Duration = 60.0
    """The longest wait between two tries of a failing client, so a target that comes back is
    drained within this long (a Retry-After may ask for longer and is honoured up to 1h)."""
    circuit_open_after: int = 3
    """Consecutive failed attempts after which a client's circuit opens: one probe at a time,
    the other deliveries wait without attempts, until a send succeeds."""
    attempt_timeout: Duration = 60.0
    """A plugin's deliver() is cancelled after this long and counted as a retryable failure."""
    max_in_flight: int = 16
    """Sends in flight at once per client, unless the client sets its own: 16 keeps a receiver on
    the network busy (with 4, a target answering in 4 ms took at most 1,000 deliveries a second);
    an order-sensitive receiver sets 1."""
    shutdown_timeout: Duration = 10.0

    @field_validator("max_in_flight")
    @classmethod
    def _in_flight(cls, v: int) -> int:
        if not 1 <= v <= 1000:
            raise ValueError("must be between 1 and 1000")
        return v

    @field_validator("circuit_open_after")
    @classmethod
    def _open_after(cls, v: int) -> int:
        if not 1 <= v <= 100:
            raise ValueError("must be between 1 and 100")
        return v


MIN_JOURNAL_BYTES = 1000**2


class StorageSettings(_Strict):
    """``storage:`` as a mapping: the shared PostgreSQL database of several replicas, and how long
    a replica's hold on its work lasts without renewal."""

    url: str
    """postgresql://USER:PASSWORD@HOST:PORT/DATABASE, libpq options (sslmode, …) in the query."""
    lease: Duration = 15.0
    """How long a replica's lanes and claims last unrenewed: the work of a replica that died
    waits this long before another takes it. Renewed every third of it."""

    @field_validator("lease")
    @classmethod
    def _lease(cls, v: float) -> float:
        if not 1 <= v <= 600:
            raise ValueError("must be between 1s and 10m, e.g. 15s")
        return v


@dataclass(frozen=True, slots=True)
class StorageChoice:
    """A PostgreSQL store shared by replicas (absent: SQLite in state_dir)."""

    target: PostgresTarget
    lease: float = 15.0


class JournalSettings(_Strict):
    """The event journal (figrelay/journal.py): every accepted event and delivery attempt, kept for
    ``figrelay events``, ``trace`` and ``replay`` and pruned in the background."""

    enabled: bool = True
    """False: events and attempts are no longer recorded, and the pruning empties the journal."""
    retention: Duration = 7 * 86400
    """Events accepted longer ago than this are pruned, with their deliveries and attempts."""
    max_bytes: Size = 256 * 1000**2
    """While the journal takes more room in the outbox's database than this, its oldest events
    are pruned, whatever their age."""

    @field_validator("retention")
    @classmethod
    def _retention(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be more than 0, e.g. 7d; to keep no journal, set journal.enabled: false")
        return v

    @field_validator("max_bytes")
    @classmethod
    def _max_bytes(cls, v: int) -> int:
        # a bare number is bytes: "max_bytes: 256" is almost certainly 256MB meant
        if v < MIN_JOURNAL_BYTES:
            hint = f" Did you mean {v}MB?" if v < 100_000 else ""
            raise ValueError(
                f"is {v} bytes (a bare number counts bytes), too small for a journal: at least {format_size(MIN_JOURNAL_BYTES)}.{hint} "
                "To keep no journal, set journal.enabled: false"
            )
        return v


class _HookModel(_Strict):
    event: str
    client: str
    client_regex: str = ".*"
    setting_regex: str | None = None
    min_sessions: int | None = None
    title: str | None = None
    text: str | None = None


class _ClientCoreModel(_Strict):
    """The client keys figrelay itself reads; the others go to the client type's options."""

    name: str
    type: str
    max_in_flight: int | None = None
    min_interval: Duration | None = None
    coalesce: Duration | None = None
    title: str | None = None
    text: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v

    @field_validator("max_in_flight")
    @classmethod
    def _in_flight(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= 1000:
            raise ValueError("must be between 1 and 1000")
        return v

    @field_validator("min_interval", "coalesce")
    @classmethod
    def _bounded(cls, v: float | None) -> float | None:
        if v is not None and v > 3600:
            raise ValueError("must be at most 1h")
        return v


class _TopModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    listen: str | list[str] = DEFAULT_LISTEN
    intake: IntakeSettings = IntakeSettings()
    state_dir: str = "./state"
    delivery: DeliverySettings = DeliverySettings()
    clients: list[Any] = []
    hooks: list[Any] = []
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    journal: JournalSettings = JournalSettings()
    storage: str | StorageSettings | None = None


def _valid_top_key(key: str, value: Any) -> bool:
    if key not in _TopModel.model_fields:
        return False
    try:
        _TopModel.model_validate({key: value})
    except ValidationError:
        return False
    return True


# --- the frozen result --------------------------------------------------------------------------

CORE_CLIENT_KEYS = tuple(_ClientCoreModel.model_fields)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    name: str
    type: str
    options: Any
    """The plugin's validated options model; None when loaded with need_credentials=False and a
    value in them could not be resolved (see ``Config.unresolved``)."""
    max_in_flight: int
    fingerprint: str
    """Equal fingerprints mean an unchanged target across a reload (it is kept open)."""
    min_interval: float = 0.0
    """Seconds between two sends to this client (pacing)."""
    coalesce: float = 0.0
    """Window in seconds for folding a burst of one hook's events into one digest."""
    templates: MessageTemplates | None = None
    renders_messages: bool = False
    max_batch: int = 0
    """The client type's most deliveries in one digest send (0: no limit)."""


@dataclass(frozen=True, slots=True)
class HookConfig:
    index: int
    event: str
    client: str
    client_regex: HookPattern
    setting_regex: HookPattern | None
    min_sessions: int | None
    line: int | None = None
    templates: MessageTemplates | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    listen: tuple[Listener, ...]
    intake: IntakeSettings
    state_dir: Path
    delivery: DeliverySettings
    clients: Mapping[str, ClientConfig]
    hooks: tuple[HookConfig, ...]
    secrets: frozenset[str] = field(default=frozenset(), repr=False)
    log_level: str = "info"
    """Every credential value in the file, so logs and errors can redact them."""
    unresolved: tuple[tuple[Path_, Problem], ...] = ()
    """With ``need_credentials=False``: the values left unresolved, by key path (see load_config)."""
    journal: JournalSettings = field(default_factory=JournalSettings)
    """``journal:``: whether the journal is kept, and how long and how large."""
    storage: StorageChoice | None = None
    """``storage:``: the PostgreSQL database replicas share; None: SQLite in ``state_dir``."""
    digest: str = ""
    """A hash of the file's text: replicas sharing a store must run the same configuration, and
    /readyz and /metrics show it so that a mismatch is visible."""

    def summary(self) -> str:
        listen = ", ".join(str(l) for l in self.listen)
        text = f"{self.path}: {plural(len(self.clients), 'client')}, {plural(len(self.hooks), 'hook')}, listening on {listen}"
        if self.storage is not None:
            text += f", sharing PostgreSQL at {self.storage.target.address()}"
        return text

    def unresolved_under(self, *prefix: str | int) -> list[Problem]:
        """The values left unresolved at or under this key path, e.g. ("clients", 0) or ("intake", "secret")."""
        return [problem for path, problem in self.unresolved if path[: len(prefix)] == prefix]


def _pydantic_problems(exc: ValidationError, base: Path_, model: type[BaseModel], out: _Collector) -> None:
    for err in exc.errors(include_url=False, include_input=False):
        loc = tuple(err["loc"])
        # pydantic names the union branch it tried ("str", "list[str]"): drop those from the path
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool"))))
        path = (*base, *loc)
        if err["type"] == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = sorted(parent.model_fields) if parent else []
            key = str(loc[-1])
            extra_allowed = [k for k in allowed]
            if base and base[0] == "clients":
                extra_allowed = sorted({*allowed, *CORE_CLIENT_KEYS})
            out.add(path, f"unknown key {key!r}{closest(key, extra_allowed)} (allowed: {', '.join(extra_allowed)})")
        elif err["type"] == "missing":
            out.add(path, "is required")
        else:
            msg = err["msg"]
            msg = msg.removeprefix("Value error, ")
            out.add(path, msg[:1].lower() + msg[1:])


def _model_at(model: type[BaseModel], loc: Path_) -> type[BaseModel] | None:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return None
        annotation = current.model_fields[part].annotation
        args = getattr(annotation, "__args__", ())
        current = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _secret_values(model: Any, names: Sequence[str] = ()) -> set[str]:
    """Every credential in a validated value: each ``SecretStr`` wherever it sits (a field, or an
    item of a mapping or list, such as a secret header's value), and the values of the options
    ``names`` (a plugin's ``secret_options``: every text in them). Only these are masked in logs
    and outputs; plain values (a header such as ``X-Team: platform``, a client name) stay readable."""
    found: set[str] = set()
    if isinstance(model, SecretStr):
        found.add(model.get_secret_value())
    elif isinstance(model, BaseModel):
        for key in type(model).model_fields:
            value = getattr(model, key)
            found |= _all_texts(value) if key in names else _secret_values(value)
    elif isinstance(model, dict):
        for v in model.values():
            found |= _secret_values(v)
    elif isinstance(model, (list, tuple, set, frozenset)):
        for v in model:
            found |= _secret_values(v)
    return {s for s in found if s}


def _all_texts(value: Any) -> set[str]:
    """Every text in an option a plugin declared secret: a URL, or each value of a mapping."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, SecretStr):
        return {value.get_secret_value()}
    if isinstance(value, BaseModel):
        items: list[Any] = [getattr(value, k) for k in type(value).model_fields]
    elif isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
    else:
        return set()
    return {text for item in items for text in _all_texts(item)}


def _without_missing(exc: ValidationError, *locs: tuple[str, ...]) -> ValidationError:
    """The same errors less the 'missing' ones at ``locs`` (reported with a better message)."""
    errors = [e for e in exc.errors(include_url=False) if not (e["type"] == "missing" and tuple(e["loc"]) in locs)]
    return ValidationError.from_exception_data(exc.title, errors)  # type: ignore[arg-type]


def _templates(
    title: str | None, text: str | None, routes: Sequence[str], path: Path_, type_name: str, renders: bool, out: _Collector
) -> MessageTemplates | None:
    """Check title/text templates against sample events of ``routes``."""
    if title is None and text is None:
        return None
    if not renders:
        key = "title" if title is not None else "text"
        out.add((*path, key), f"the {type_name!r} client type sends events as they are, not messages, so it takes no title or text template")
        return None
    ok = True
    for key, source in (("title", title), ("text", text)):
        if source is None:
            continue
        try:
            check_template(source, routes or None)
        except TemplateError as exc:
            out.add((*path, key), f"bad template: {exc}")
            ok = False
    return MessageTemplates(title, text) if ok else None


def _compile(pattern: Any, path: Path_, out: _Collector, compiled: dict[str, HookPattern | str]) -> HookPattern | None:
    """The compiled pattern, from ``compiled`` when another hook has the same one: re's and
    regex's own caches hold a few hundred patterns, fewer than a large file has."""
    text = str(pattern)
    found = compiled.get(text)
    if found is None:
        try:
            found = compile_hook_regex(text)
        except ValueError as exc:
            found = str(exc)
        compiled[text] = found
    if isinstance(found, str):
        out.add(path, f"invalid regular expression {pattern!r}: {found}")
        return None
    return found


def _stable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: _stable(getattr(value, k)) for k in type(value).model_fields}
    if isinstance(value, SecretStr):
        return ("secret", value.get_secret_value())
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value


def load_config(path: str | os.PathLike[str], registry: PluginRegistry, *, need_credentials: bool = True) -> Config:
    """Read and validate the file at ``path``; raise ConfigError with every problem found.

    ``need_credentials=False`` is for the commands that deliver nothing (``deliveries``,
    ``matches``, ``send``): they run from a shell, where the service's credentials (its
    ``${file:${CREDENTIALS_DIRECTORY}/...}``) are not at hand. A ${...} that cannot be resolved
    in a client's plugin options or in the intake's secret is then no error: that client keeps its
    name and type with ``options=None``, the intake is taken to require a secret, and the problem
    is kept in ``Config.unresolved``. Everything else (listen, state_dir, hooks) is checked as ever.
    """
    path = Path(path)
    file = str(path)
    out = _Collector(file)
    out.need_credentials = need_credentials
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([Problem(file, None, "", f"cannot read the configuration: {reason}")]) from None
    return parse_config(text, path, registry, out)


def parse_config(text: str, path: Path, registry: PluginRegistry, out: _Collector | None = None) -> Config:
    out = out or _Collector(str(path))
    base_dir = path.parent.resolve()
    data = _read_yaml(text, str(path), base_dir, out)
    if data is None:  # not YAML, or empty: a document of only '---' or '~' is empty too
        raise ConfigError(out.problems or [Problem(str(path), None, "", _EMPTY)])
    if not isinstance(data, dict):
        # a half-written file often stops after its first word, which YAML reads as a text
        found = "a list" if isinstance(data, list) else f"only the text {str(data)[:40]!r}"
        out.add((), f"the file must be a mapping with keys such as listen, intake, clients, hooks, but it holds {found}")
        raise ConfigError(out.problems)

    # an intake secret that cannot be resolved here (need_credentials=False) still means the
    # daemon requires one: validate without it, and do not ask for a secret below
    deferred_intake = {path[1] for path, _ in out.unresolved if path[:1] == ("intake",)}
    if deferred_intake and isinstance(data.get("intake"), dict):
        data = {**data, "intake": {k: v for k, v in data["intake"].items() if k not in deferred_intake}}

    try:
        top = _TopModel.model_validate(data)
    except ValidationError as exc:
        _pydantic_problems(exc, (), _TopModel, out)
        # keep checking the keys that are valid, so one run reports as much as it can
        top = _TopModel.model_validate({k: v for k, v in data.items() if _valid_top_key(k, v)})

    # listen
    listen_raw = [top.listen] if isinstance(top.listen, str) else list(top.listen)
    listeners: list[Listener] = []
    if not listen_raw:
        out.add(("listen",), "needs at least one address, e.g. 127.0.0.1:8970")
    for i, item in enumerate(listen_raw):
        key: Path_ = ("listen",) if isinstance(top.listen, str) else ("listen", i)
        try:
            listeners.append(Listener.parse(item))
        except ValueError as exc:
            out.add(key, str(exc))

    intake = top.intake
    intake_valid = "intake" not in data or _valid_top_key("intake", data["intake"])
    if intake.secret is not None and intake.hashed_secret is not None:
        out.add(("intake",), "set either 'secret' or 'hashed_secret', not both")
    # a ${...} that could not be resolved left it empty, and has said why already
    unresolved_secret = any(p.key == "intake.secret" for p in out.problems)
    if intake.secret is not None and not intake.secret.get_secret_value() and not unresolved_secret:
        out.add(("intake", "secret"), "is empty; remove it or give the secret")
    if intake_valid and intake.secret is None and intake.hashed_secret is None and not deferred_intake:
        remote = [str(l) for l in listeners if not l.is_local]
        if remote:
            out.add(
                ("intake",) if "intake" in data else ("listen",),
                f"no secret is configured but figrelay listens on {', '.join(remote)}, which other machines can reach; "
                "set intake.hashed_secret (the hash Fig's web app shows) or intake.secret, or listen on a loopback address or unix socket",
            )

    state_dir = Path(os.path.expanduser(top.state_dir))
    if not state_dir.is_absolute():
        state_dir = base_dir / state_dir

    storage = None
    if top.storage is not None:
        settings = top.storage if isinstance(top.storage, StorageSettings) else StorageSettings(url=top.storage)
        storage_key: Path_ = ("storage", "url") if isinstance(top.storage, StorageSettings) else ("storage",)
        try:
            storage = StorageChoice(parse_storage_url(settings.url), settings.lease)
        except StorageURLError as exc:
            for problem in exc.problems:
                out.add(storage_key, problem)

    # hooks first: a client's templates are checked against the events its hooks send it
    hook_models: list[tuple[int, _HookModel]] = []
    for i, raw_hook in enumerate(top.hooks):
        try:
            hook_models.append((i, _HookModel.model_validate(raw_hook)))
        except ValidationError as exc:
            _pydantic_problems(exc, ("hooks", i), _HookModel, out)

    # the event types each client's hooks send it, for checking its templates
    client_routes: dict[str, set[str]] = {}
    for _, h in hook_models:
        if h.event in ROUTES:
            client_routes.setdefault(h.client, set()).add(h.event)

    # clients
    clients: dict[str, ClientConfig] = {}
    known_clients: dict[str, str | None] = {}  # name -> type, for every client named, valid or not
    secrets = _secret_values(intake) | out.file_values | set(storage.target.secrets() if storage is not None else ())
    for i, raw in enumerate(top.clients):
        cpath: Path_ = ("clients", i)
        if not isinstance(raw, dict):
            out.add(cpath, "each client must be a mapping with at least 'name' and 'type'")
            continue
        name, type_name = raw.get("name"), raw.get("type")
        if isinstance(name, str):
            if name in known_clients:
                out.add((*cpath, "name"), f"duplicate client name {name!r}; client names must be unique")
                continue
            known_clients[name] = type_name if isinstance(type_name, str) else None
        try:
            core = _ClientCoreModel.model_validate({k: v for k, v in raw.items() if k in CORE_CLIENT_KEYS})
        except ValidationError as exc:
            for err in exc.errors(include_url=False, include_input=False):
                if err["loc"] == ("type",) and err["type"] == "missing":
                    out.add((*cpath, "type"), f"is required: one of the installed client types ({', '.join(registry.type_names()) or 'none installed'})")
                elif err["loc"] == ("name",) and err["type"] == "missing":
                    out.add((*cpath, "name"), "is required: a unique name for this client, used by hooks")
            _pydantic_problems(_without_missing(exc, ("type",), ("name",)), cpath, _ClientCoreModel, out)
            core = None
        client_type = registry.client_types.get(type_name) if isinstance(type_name, str) else None
        if isinstance(type_name, str) and client_type is None:
            installed = ", ".join(registry.type_names()) or "none"
            hint = closest(type_name, registry.type_names())
            out.add((*cpath, "type"), f"unknown client type {type_name!r}{hint} (installed: {installed}; `figrelay plugins` lists them)")
        if client_type is None:
            continue
        options: Any = None
        try:
            # options with a value left unresolved (need_credentials=False) cannot be validated, and
            # the command that loaded them does not use them
            if not any(p[:2] == cpath for p, _ in out.unresolved):
                options = client_type.options.model_validate(
                    {k: v for k, v in raw.items() if k not in CORE_CLIENT_KEYS}, context={"config_dir": base_dir},
                )
        except ValidationError as exc:
            _pydantic_problems(exc, cpath, client_type.options, out)
            continue
        except Exception as exc:  # a plugin's validator that raised something else
            out.add(cpath, f"the {type_name!r} plugin could not check these options: {type(exc).__name__}: {exc}")
            continue
        if options is not None:
            secrets |= _secret_values(options, client_type.secret_options)
        if core is None:
            continue
        routes = sorted(client_routes.get(core.name, ()))
        templates = _templates(core.title, core.text, routes, cpath, client_type.name, client_type.renders_messages, out)
        max_in_flight = core.max_in_flight if core.max_in_flight is not None else top.delivery.max_in_flight
        min_interval = core.min_interval if core.min_interval is not None else client_type.default_min_interval
        coalesce = core.coalesce if core.coalesce is not None else client_type.default_coalesce
        # a digest, so that no secret sits in the ClientConfig's repr
        fingerprint = hashlib.sha256(repr((type_name, _stable(options))).encode()).hexdigest()
        clients[core.name] = ClientConfig(
            core.name, client_type.name, options, max_in_flight, fingerprint, min_interval, coalesce, templates, client_type.renders_messages,
            client_type.max_batch,
        )

    # hooks
    hooks: list[HookConfig] = []
    patterns: dict[str, HookPattern | str] = {}  # each distinct regex compiled once (or its error)
    for i, hook in hook_models:
        hpath: Path_ = ("hooks", i)
        valid = True
        if hook.event not in ROUTES:
            out.add((*hpath, "event"), f"unknown event {hook.event!r}{closest(hook.event, ROUTES)} (one of: {', '.join(ROUTES)})")
            valid = False
        if hook.client not in known_clients:
            names = sorted(known_clients)
            out.add((*hpath, "client"), f"no client is named {hook.client!r}{closest(hook.client, names)} (clients: {', '.join(names) or 'none defined'})")
            valid = False
        client_re = _compile(hook.client_regex, (*hpath, "client_regex"), out, patterns)
        setting_re = None
        if hook.setting_regex is not None:
            if hook.event != "SettingValueChanged":
                out.add((*hpath, "setting_regex"), "applies only to SettingValueChanged hooks; remove it")
                valid = False
            elif hook.setting_regex == "":
                out.add((*hpath, "setting_regex"), "is blank, which in Fig matches no setting; use '.*' for every setting")
                valid = False
            setting_re = _compile(hook.setting_regex, (*hpath, "setting_regex"), out, patterns)
        elif hook.event == "SettingValueChanged":
            setting_re = _compile(".*", (*hpath, "setting_regex"), out, patterns)
        if hook.min_sessions is not None:
            if hook.event != "MinRunSessions":
                out.add((*hpath, "min_sessions"), "applies only to MinRunSessions hooks; remove it")
                valid = False
            elif hook.min_sessions < 1:
                out.add((*hpath, "min_sessions"), f"must be at least 1, got {hook.min_sessions}")
                valid = False
        templates = None
        if hook.title is not None or hook.text is not None:
            client_type_name = known_clients.get(hook.client)
            client_type = registry.client_types.get(client_type_name) if client_type_name else None
            if client_type is not None and hook.event in ROUTES:
                templates = _templates(hook.title, hook.text, [hook.event], hpath, client_type.name, client_type.renders_messages, out)
        if valid and client_re is not None and (hook.setting_regex is None or setting_re is not None):
            hooks.append(HookConfig(i, hook.event, hook.client, client_re, setting_re, hook.min_sessions, out.line_of(hpath), templates))

    if out.problems:
        raise ConfigError(out.problems)
    return Config(
        path=path,
        listen=tuple(listeners),
        intake=intake,
        state_dir=state_dir,
        delivery=top.delivery,
        clients=clients,
        hooks=tuple(hooks),
        secrets=frozenset(secrets),  # figrelay.logs.secret_parts finds a credential URL's parts
        log_level=top.log_level,
        unresolved=tuple(out.unresolved),
        journal=top.journal,
        storage=storage,
        digest=hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16],
    )
