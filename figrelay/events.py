"""The seven Fig web hook contracts: parse them strictly, serialise them byte-compatibly.

Fig (v4) serialises with Newtonsoft.Json defaults: PascalCase names in declaration order,
enums as integers, nulls written, compact, non-ASCII raw. Parsing follows the receiver's rule
from FIG.md: strict about what figrelay needs (a missing ``ClientName`` is an error), lenient
about the rest (camelCase keys, enum names, unknown extra fields, a missing ``IsTest``).

Unknown extra fields are kept and written back after the known ones, so a newer Fig's
additions survive the relay.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import encodings.utf_8_sig  # noqa: F401  imported now: a lazy import needs a free file descriptor
import enum
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

__all__ = [
    "ConnectionEvent",
    "RegistrationType",
    "RunSessionsEvent",
    "HealthStatus",
    "FigDateTime",
    "HealthComponent",
    "HealthDetails",
    "FigEvent",
    "ClientStatusChanged",
    "SettingValueChanged",
    "NewClientRegistration",
    "UpdatedClientRegistration",
    "MinRunSessions",
    "HealthStatusChanged",
    "SecurityEvent",
    "EVENT_TYPES",
    "ROUTES",
    "EventError",
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "decode_body",
    "parse_event",
    "parse_event_body",
]

Extras = tuple[tuple[str, Any], ...]


class EventError(ValueError):
    """An event body that figrelay cannot accept; ``field`` is a path such as ``HealthDetails.Status``."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field


class ConnectionEvent(enum.IntEnum):
    Connected = 0
    Disconnected = 1


class RegistrationType(enum.IntEnum):
    New = 0
    Updated = 1


class RunSessionsEvent(enum.IntEnum):
    BelowMinimum = 0
    MinimumRestored = 1


class HealthStatus(enum.IntEnum):
    Healthy = 0
    Degraded = 1
    Unhealthy = 2
    Unknown = 3


_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?", re.ASCII
)


@dataclass(frozen=True, slots=True)
class FigDateTime:
    """A .NET DateTime as Fig writes it, kept to its full 100 ns precision.

    ``text`` is written back unchanged, so a relayed body stays byte-identical; ``ticks``
    (100 ns units since the Unix epoch, UTC) identifies the instant whatever its spelling.
    """

    text: str
    ticks: int

    @classmethod
    def parse(cls, text: str) -> FigDateTime:
        m = _DATETIME.fullmatch(text)
        if m is None:
            raise ValueError("must be a date and time like 2025-06-01T12:34:56.1234567Z")
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        fraction, zone = m.group(7) or "", m.group(8)
        try:
            base = _dt.datetime(year, month, day, hour, minute, second, tzinfo=_dt.timezone.utc)
            if zone and zone != "Z":
                sign = 1 if zone[0] == "+" else -1
                base -= sign * _dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"is not a valid date and time ({exc})") from None
        seconds = (base - _EPOCH) // _dt.timedelta(seconds=1)
        # .NET keeps 7 fraction digits (100 ns ticks); further digits are dropped, as Newtonsoft does
        ticks = seconds * 10_000_000 + int(fraction[:7].ljust(7, "0"))
        return cls(text, ticks)

    @classmethod
    def from_datetime(cls, value: _dt.datetime) -> FigDateTime:
        """Fig's spelling of an aware datetime: UTC, trailing fraction zeros dropped, ``Z``."""
        value = value.astimezone(_dt.timezone.utc)
        fraction = f"{value.microsecond:06d}0".rstrip("0")
        text = value.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"
        return cls.parse(text)

    @property
    def datetime(self) -> _dt.datetime:
        """The instant as an aware UTC datetime (microsecond precision)."""
        return _EPOCH + _dt.timedelta(microseconds=self.ticks // 10)

    def __str__(self) -> str:
        return self.text


_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


# --- field codecs -------------------------------------------------------------------------------
# A codec turns one JSON value into its typed value (raising ValueError with a message a sender
# can act on) and back. They are derived once per class from its type annotations.

_Codec = tuple[Callable[[Any, str], Any], Callable[[Any], Any]]


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _parse_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise EventError(f"must be a string, got {_type_name(value)}", path)
    return value


def _parse_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise EventError(f"must be true or false, got {_type_name(value)}", path)


def _parse_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise EventError(f"must be a whole number, got {_type_name(value)}", path)
    if value < 0:
        raise EventError(f"must not be negative, got {value}", path)
    return value


def _enum_codec(cls: type[enum.IntEnum]) -> _Codec:
    by_name = {m.name.lower(): m for m in cls}
    allowed = ", ".join(f"{m.value} ({m.name})" for m in cls)

    def parse(value: Any, path: str) -> enum.IntEnum:
        if isinstance(value, str):
            text = value.strip()
            if text.lower() in by_name:
                return by_name[text.lower()]
            if text.isascii() and text.isdigit() and len(text) <= 10:  # int() refuses 4,300+ digits
                value = int(text)
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        raise EventError(f"must be one of {allowed}, got {_clip(json.dumps(value))}", path)

    return parse, int


def _parse_datetime(value: Any, path: str) -> FigDateTime:
    text = _parse_str(value, path)
    try:
        return FigDateTime.parse(text)
    except ValueError as exc:
        raise EventError(f"{exc}, got {json.dumps(text)}", path) from None


def _optional(codec: _Codec) -> _Codec:
    parse, dump = codec

    def parse_optional(value: Any, path: str) -> Any:
        return None if value is None else parse(value, path)

    return parse_optional, (lambda v: None if v is None else dump(v))


def _sequence(codec: _Codec) -> _Codec:
    parse, dump = codec

    def parse_list(value: Any, path: str) -> tuple[Any, ...]:
        if value is None:
            return ()
        if not isinstance(value, list):
            raise EventError(f"must be an array, got {_type_name(value)}", path)
        return tuple(parse(item, f"{path}[{i}]") for i, item in enumerate(value))

    return parse_list, (lambda v: [dump(item) for item in v])


def _record(cls: type) -> _Codec:
    def parse(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise EventError(f"must be an object, got {_type_name(value)}", path)
        return cls._from_wire(value, path + ".")

    return parse, (lambda v: v._to_wire())


_SCALARS: dict[Any, _Codec] = {
    str: (_parse_str, str),
    bool: (_parse_bool, bool),
    int: (_parse_int, int),
    FigDateTime: (_parse_datetime, str),
}


def _codec_for(hint: Any) -> _Codec:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _optional(_codec_for(inner[0]))
    if origin is tuple:
        return _sequence(_codec_for(typing.get_args(hint)[0]))
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and issubclass(hint, enum.IntEnum):
        return _enum_codec(hint)
    if isinstance(hint, type) and hasattr(hint, "_wire_fields"):
        return _record(hint)
    raise TypeError(f"no codec for {hint!r}")


@dataclass(frozen=True, slots=True)
class _WireField:
    attr: str
    wire: str
    parse: Callable[[Any, str], Any]
    dump: Callable[[Any], Any]
    required: bool


def _wire_name(attr: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in attr.split("_"))


_R = TypeVar("_R")


def _contract(cls: type[_R]) -> type[_R]:
    """Derive a record's wire fields (name, codec, required) from its dataclass fields."""
    hints = typing.get_type_hints(cls)
    wire_fields = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == "extra":
            continue
        parse, dump = _codec_for(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        wire_fields.append(_WireField(f.name, _wire_name(f.name), parse, dump, required))
    cls._wire_fields = tuple(wire_fields)  # type: ignore[attr-defined]
    cls._by_lower = {wf.wire.lower(): wf for wf in wire_fields}  # type: ignore[attr-defined]
    return cls


class _Record:
    """Shared wire behaviour of every Fig contract and its nested objects."""

    __slots__ = ()
    _wire_fields: ClassVar[tuple[_WireField, ...]]
    _by_lower: ClassVar[dict[str, _WireField]]

    @classmethod
    def _from_wire(cls, data: Mapping[str, Any], prefix: str = "") -> Any:
        values: dict[str, Any] = {}
        seen: dict[str, str] = {}
        extra: list[tuple[str, Any]] = []
        for key, value in data.items():
            wf = cls._by_lower.get(key.lower())
            if wf is None:
                extra.append((key, value))
                continue
            if wf.attr in seen:
                raise EventError(f"given twice (as {seen[wf.attr]!r} and {key!r})", prefix + wf.wire)
            seen[wf.attr] = key
            values[wf.attr] = wf.parse(value, prefix + wf.wire)
        for wf in cls._wire_fields:
            if wf.required and (wf.attr not in values or values[wf.attr] is None):
                problem = "is required" if wf.attr not in values else "must not be null"
                raise EventError(problem, prefix + wf.wire)
        return cls(**values, extra=tuple(extra))  # type: ignore[call-arg]

    def _to_wire(self) -> dict[str, Any]:
        out = {wf.wire: wf.dump(getattr(self, wf.attr)) for wf in self._wire_fields}
        for key, value in self.extra:  # type: ignore[attr-defined]
            out.setdefault(key, value)
        return out


@_contract
@dataclass(frozen=True, slots=True, kw_only=True)
class HealthComponent(_Record):
    name: str | None = None
    status: HealthStatus
    message: str | None = None
    extra: Extras = ()


@_contract
@dataclass(frozen=True, slots=True, kw_only=True)
class HealthDetails(_Record):
    status: HealthStatus
    components: tuple[HealthComponent, ...] = ()
    extra: Extras = ()


class FigEvent(_Record):
    """Base of the seven contracts. ``route`` is both the URL path segment and the type name."""

    __slots__ = ()
    route: ClassVar[str]

    @property
    def setting_client(self) -> str | None:
        """The setting client the event is about; None for SecurityEvent."""
        return getattr(self, "client_name", None)

    @property
    def test(self) -> bool:
        return bool(self.is_test)

    def to_wire(self) -> dict[str, Any]:
        """The event as a JSON-ready dict in Fig's key order."""
        return self._to_wire()

    def to_json(self) -> bytes:
        """The body exactly as Fig would put it on the wire."""
        text = json.dumps(self._to_wire(), separators=(",", ":"), ensure_ascii=False)
        if "\u0085" in text or "\u2028" in text or "\u2029" in text:
            text = text.replace("\u0085", "\\u0085").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            # a lone surrogate ("\ud800" in the JSON received): .NET writes U+FFFD in its place
            return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


@_contract
@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStatusChanged(FigEvent):
    route: ClassVar[str] = "ClientStatusChanged"
    client_name: str
    instance: str | None = None
    connection_event: ConnectionEvent
    start_time: FigDateTime | None = None
    ip_address: str | None = None
    hostname: str | None = None
    fig_version: str | None = None
    application_version: str | None = None
    link: str | None = None
    is_test: bool = False
    extra: Extras = ()


@_contract
@dataclass(frozen=True, slots=True, kw_only=True)
class SettingValueChanged(FigEvent):
    route: ClassVar[str] = "SettingValueChanged"
    client_name: str
    instance: str | None = None
    updated_settings: tuple[str, ...]
    username: str | None = None
    link: str | None = None
    change_message: str | None = None
    is_test: bool = False
    extra: Extras = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class _Registration(FigEvent):
    """The shared contract of NewClientRegistration and UpdatedClientRegistration."""

    client_name: str
    instance: str | None = None
    settings: tuple[str, ...] = ()
    registration_type: RegistrationType = RegistrationType.New
    link: str | None = None
    is_test: bool = False
    extra: Extras = ()


@_contract
@dataclass(frozen=True, slots=True, kw_only=True)
class NewClientRegistration(_Registration):
    route: ClassVar[str] = "NewClientRegistration"


@_contract
@dataclass(frozen=True, slots=True, kw_only=True)
class UpdatedClientRegistration(_Registration):
    route: ClassVar[str] = "UpdatedClientRegistration"
    registration_type: RegistrationType = RegistrationType.Updated


@_contract
@dataclass(frozen=True, slots=True, kw_only=True)
class MinRunSessions(FigEvent):
    route: ClassVar[str] = "MinRunSessions"
    client_name: str
    instance: str | None = None
    run_sessions: int
    run_sessions_event: RunSessionsEvent
    link: str | None = None
    is_test: bool = False
    extra: Extras = ()


@_contract
@dataclass(frozen=True, slots=True, kw_only=True)
class HealthStatusChanged(FigEvent):
    route: ClassVar[str] = "HealthStatusChanged"
    client_name: str
    instance: str | None = None
    hostname: str | None = None
    ip_address: str | None = None
    status: HealthStatus
    fig_version: str | None = None
    application_version: str | None = None
    health_details: HealthDetails | None = None
    link: str | None = None
    is_test: bool = False
    extra: Extras = ()


@_contract
@dataclass(frozen=True, slots=True, kw_only=True)
class SecurityEvent(FigEvent):
    route: ClassVar[str] = "SecurityEvent"
    event_type: str = "Login"
    timestamp: FigDateTime | None = None
    username: str | None = None
    success: bool
    ip_address: str | None = None
    hostname: str | None = None
    failure_reason: str | None = None
    uri: str | None = None
    is_test: bool = False
    extra: Extras = ()


EVENT_TYPES: dict[str, type[FigEvent]] = {
    cls.route: cls
    for cls in (
        ClientStatusChanged,
        SettingValueChanged,
        NewClientRegistration,
        UpdatedClientRegistration,
        MinRunSessions,
        HealthStatusChanged,
        SecurityEvent,
    )
}
"""The seven routes in the order of Fig's Test button."""

ROUTES: tuple[str, ...] = tuple(EVENT_TYPES)


def parse_event(route: str, data: Any) -> FigEvent:
    """Validate a decoded JSON body posted to ``/<route>``; raise EventError naming the field."""
    cls = EVENT_TYPES.get(route)
    if cls is None:
        raise EventError(f"unknown event type {route!r}; known: {', '.join(ROUTES)}")
    if not isinstance(data, dict):
        raise EventError(f"the body must be a JSON object, got {_type_name(data)}")
    return typing.cast(FigEvent, cls._from_wire(data))


def parse_event_body(route: str, body: bytes) -> FigEvent:
    """Decode and validate a raw body; raise EventError on bad UTF-8, bad JSON, JSON that cannot be
    relayed as valid JSON, or a bad field."""
    try:
        return parse_event(route, decode_body(body))
    except EventError:
        raise
    except (RecursionError, ValueError) as exc:
        # defensive: whatever a sender puts in a body is its mistake (a 400), never a crash (a 500)
        raise EventError(f"the body cannot be accepted ({type(exc).__name__}: {_clip(str(exc))})") from None


# --- decoding a body: only JSON that can be relayed as valid JSON ---------------------------------
# Python's json module accepts more than JSON (NaN, Infinity, and 1e999, which becomes infinity) and
# fails on JSON that is valid but absurd (1,000 levels deep: RecursionError; 4,300+ digit integers:
# ValueError). figrelay relays what it accepts, so it refuses, naming the field, anything it could
# not write back as valid JSON. It also replaces lone surrogates (a "\ud800" escape) by U+FFFD at
# once, as .NET does when it writes them, so matching, storage, session keys and the relayed body
# all see the same text.

MAX_DEPTH = 64
"""Newtonsoft.Json's default MaxDepth. Fig's own bodies are 4 levels deep."""

MAX_INT_DIGITS = 4300
"""Python's default limit for int(str); a longer integer is refused (it can be sent as a string)."""

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _clip(text: str, limit: int = 60) -> str:
    """Text quoted in an error message, shortened: a sender's value can be a megabyte long."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Unrelayable:
    """Stands where a value that cannot be relayed was, until the walk finds its path."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


class _StrictNumbers:
    """``json.loads`` hooks: finite numbers pass, anything else becomes an _Unrelayable marker."""

    def __init__(self) -> None:
        self.refused: list[_Unrelayable] = []

    def _refuse(self, problem: str) -> _Unrelayable:
        marker = _Unrelayable(problem)
        self.refused.append(marker)
        return marker

    def constant(self, token: str) -> Any:
        return self._refuse(f"{token} is not valid JSON (a JSON number is finite); send null, or the text as a string \"{token}\"")

    def float(self, token: str) -> Any:
        value = float(token)
        if math.isfinite(value):
            return value
        return self._refuse(f"the number {_clip(token)} is too large to relay as JSON (the limit is about 1.8e308); send it as a string")

    def int(self, token: str) -> Any:
        digits = len(token) - token.startswith("-")
        limit = min(MAX_INT_DIGITS, sys.get_int_max_str_digits() or MAX_INT_DIGITS)
        if digits <= limit:
            return int(token)
        return self._refuse(f"an integer of {digits} digits is too long to relay (at most {limit}); send it as a string")


def decode_body(body: bytes) -> Any:
    """A body's JSON value, refusing (EventError) what figrelay could not relay as valid JSON."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EventError(f"the body is not valid UTF-8 (byte {exc.start})") from None
    numbers = _StrictNumbers()
    try:
        data = json.loads(text, parse_constant=numbers.constant, parse_float=numbers.float, parse_int=numbers.int)
    except json.JSONDecodeError as exc:
        raise EventError(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise EventError(_too_deep()) from None
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    # cheap tests first: a body needs the walk only when it may be too deep, hold a refused
    # number or escape a surrogate (Fig's own bodies have a dozen brackets and none of the rest)
    if numbers.refused or surrogates or text.count("[") + text.count("{") > MAX_DEPTH:
        data = _walk(data, surrogates)
        if numbers.refused:  # a refused value that a later duplicate key replaced is still refused
            raise EventError(numbers.refused[0].problem)
    return data


def _too_deep() -> str:
    return f"the body is nested more than {MAX_DEPTH} levels deep (Fig's events have 4 levels); send flatter data"


def _walk(data: Any, fix_surrogates: bool) -> Any:
    """Check the depth, find an unrelayable value's path, and replace lone surrogates in every key
    and string, without recursion (the depth is the sender's choice)."""
    if isinstance(data, _Unrelayable):
        raise EventError(data.problem)
    if isinstance(data, str):
        return _SURROGATE.sub("\ufffd", data) if fix_surrogates else data
    stack: list[tuple[dict[str, Any] | list[Any], str, int]] = [(data, "", 1)] if isinstance(data, (dict, list)) else []
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise EventError(_too_deep(), _clip(path, 100) or None)
        if isinstance(node, dict):
            if fix_surrogates and any(_SURROGATE.search(key) for key in node):
                items = [(_SURROGATE.sub("\ufffd", key), value) for key, value in node.items()]
                node.clear()
                node.update(items)  # two keys that became equal: the later wins, as with a duplicate key
            children: Iterable[tuple[str | int, Any]] = list(node.items())
        else:
            children = enumerate(node)
        for slot, value in children:
            child = (f"{path}.{_clip(slot, 40)}" if path else _clip(slot, 40)) if isinstance(slot, str) else f"{path}[{slot}]"
            if isinstance(value, _Unrelayable):
                raise EventError(value.problem, child)
            if isinstance(value, str):
                if fix_surrogates and _SURROGATE.search(value):
                    node[slot] = _SURROGATE.sub("\ufffd", value)  # type: ignore[index]
            elif isinstance(value, (dict, list)):
                stack.append((value, child, depth + 1))
    return data
