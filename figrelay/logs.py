"""Logging set-up: plain lines for a terminal or JSON lines for a log store, and the filters that
keep every line honest and the log bounded:

- ``RepeatLimiter``: a warning or error that repeats (a flood of malformed requests, asyncio
  failing to accept while file descriptors run out) is written at most 5 times per 10 seconds;
  the next one written carries the count of those held back. INFO and below always pass.
- ``EscapeControls``: control characters in a record's arguments (event data: a ClientName with
  a newline or an ANSI escape) are written as escapes (``\\n``, ``\\x1b``, ``\\u2028``), so a sender
  can neither forge a log line nor drive the terminal. The message template, figrelay's own
  text, keeps its newlines.
- ``RedactSecrets``: every configured credential in the final message becomes ``***``, also when
  it is URL-encoded, JSON-escaped or cut short; ``redactor.redact`` does the same for any other
  text figrelay shows or stores (dead letters, command output, /metrics, /readyz).
- ``OncePerKey``: at most one line per key (a refused request's reason and peer) per window,
  with a count of the lines held back.

A line about an event or a delivery carries its ids as fields (``extra=fields(event_id=...,
delivery_id=...)``): the JSON format writes each as a key of its own, escaped and redacted like
the message, so a log store can filter on them; the text format shows only the message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote, urlsplit

REDACTED = "***"

# C0 (with \t \n \r ESC), DEL, C1 (with NEL \x85 and CSI \x9b), the Unicode line and paragraph
# separators, and the bidirectional overrides that can make a line read differently from what it says
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROLS_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(m: re.Match[str]) -> str:
    c = m.group()
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """``text`` with each control character written as an escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    pattern = _CONTROLS_BUT_NEWLINE if keep_newlines else _CONTROLS
    if pattern.search(text) is None:
        return text
    return pattern.sub(_escape_one, text)


class _Escaped:
    """A log argument whose text is written with its control characters escaped."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return escape_controls(str(self.value))

    def __repr__(self) -> str:
        return escape_controls(repr(self.value))

    def __format__(self, spec: str) -> str:
        return escape_controls(format(self.value, spec))


def _safe_arg(arg: object) -> object:
    if arg is None or isinstance(arg, (bool, int, float, _Escaped)):
        return arg  # numbers keep working with %d and %.1f, and cannot hold a control character
    try:
        text = arg if isinstance(arg, str) else str(arg)
    except Exception:  # a broken __str__ is logging's own error to report
        return arg
    return _Escaped(arg) if _CONTROLS.search(text) else arg


# --- ids as fields -------------------------------------------------------------------------------

FIELDS = ("event_id", "delivery_id", "client", "route", "attempt", "outcome")
"""The ids a log line may carry as fields of its own (``extra=fields(...)``), in the order the
JSON format writes them. None of them is an attribute LogRecord has already."""


def fields(
    *, event_id: str | None = None, delivery_id: str | None = None, client: str | None = None, route: str | None = None,
    attempt: int | None = None, outcome: str | None = None,
) -> dict[str, object]:
    """``extra=`` for a log call about an event or a delivery, without the ids that are None:
    ``log.info("delivery %s: ...", d.id, extra=fields(event_id=d.event_id, delivery_id=d.id, client=d.client))``."""
    given = {"event_id": event_id, "delivery_id": delivery_id, "client": client, "route": route, "attempt": attempt, "outcome": outcome}
    return {name: value for name, value in given.items() if value is not None}


def _field_value(value: object) -> object:
    """A field as JSON writes it: numbers and booleans as they are, anything else as its text
    with control characters escaped (as a message's arguments are)."""
    if isinstance(value, (bool, int, float)):
        return value
    try:
        return escape_controls(value if isinstance(value, str) else str(value))
    except Exception:  # a broken __str__ must not cost the line
        return f"<unprintable {type(value).__name__}>"


def _record_fields(record: logging.LogRecord) -> dict[str, object]:
    return {name: value for name in FIELDS if (value := getattr(record, name, None)) is not None}


class EscapeControls(logging.Filter):
    """Escapes control characters in a record's arguments, its non-text message, its exception
    text and its fields; a text message is figrelay's own template and keeps its intended line
    breaks."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _record_fields(record).items():
            setattr(record, name, _field_value(value))
        if isinstance(record.args, Mapping):
            record.args = {key: _safe_arg(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(_safe_arg(arg) for arg in record.args)
        if not isinstance(record.msg, str):
            record.msg = _safe_arg(record.msg)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = escape_controls(record.exc_text, keep_newlines=True)
        return True


# --- bounded repeats --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    opened: float
    written: int = 0
    held_back: int = 0


class RepeatLimiter(logging.Filter):
    """Writes at most ``burst`` lines of one kind per ``window`` seconds; the first line after that
    says how many similar lines were held back. A kind is (logger, level, the message template's
    first line), so one template with ever-changing arguments is one kind. Records below
    ``level`` (INFO and DEBUG by default) always pass, so normal delivery logs are untouched.
    ``clock`` is injectable for tests."""

    _MAX_KINDS = 1024  # bounded memory, however many kinds there are

    def __init__(self, window: float = 10.0, burst: int = 5, level: int = logging.WARNING, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.burst = burst
        self.level = level
        self._clock = clock
        self._kinds: OrderedDict[tuple[str, int, str], _Window] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        template = record.msg if isinstance(record.msg, str) else str(type(record.msg))
        kind = (record.name, record.levelno, template.split("\n", 1)[0])
        now = self._clock()
        seen = self._kinds.get(kind)
        if seen is None or now - seen.opened >= self.window:
            held_back = seen.held_back if seen else 0
            seen = self._kinds[kind] = _Window(now)
            self._kinds.move_to_end(kind)
            while len(self._kinds) > self._MAX_KINDS:
                self._kinds.popitem(last=False)
            if held_back:
                _append(record, f" [{held_back} similar line{'s' if held_back != 1 else ''} held back before this one]")
        if seen.written >= self.burst:
            seen.held_back += 1
            return False
        seen.written += 1
        return True


@dataclass(slots=True)
class _KeyWindow:
    opened: float
    held_back: int = 0


class OncePerKey:
    """At most one line per key (say, a refused request's reason and peer) per ``window`` seconds;
    the lines of that key within the window are held back and counted. ``admit`` says whether to
    write a line and how many were held back before it; ``due`` hands out the counts of windows
    that are over, for a summary line each, so a flood that stops is still accounted for; ``drain``
    hands out every count (at shutdown). Memory is bounded: beyond ``max_keys`` the oldest keys'
    counts are added up under the key None. ``clock`` is injectable for tests."""

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic, max_keys: int = 4096) -> None:
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._keys: OrderedDict[Hashable, _KeyWindow] = OrderedDict()
        self._evicted = 0

    def admit(self, key: Hashable) -> int | None:
        """None: hold this line back. Otherwise write it, noting the returned number of lines of
        this key held back since its last line and not yet reported."""
        now = self._clock()
        seen = self._keys.get(key)
        if seen is not None and now - seen.opened < self.window:
            seen.held_back += 1
            return None
        self._keys[key] = _KeyWindow(now)
        self._keys.move_to_end(key)
        while len(self._keys) > self._max_keys:
            _, dropped = self._keys.popitem(last=False)
            self._evicted += dropped.held_back
        return seen.held_back if seen is not None else 0

    def due(self) -> list[tuple[Hashable | None, int]]:
        """(key, count) for each window that is over with lines held back; those keys start afresh,
        so their next line is written at once."""
        now = self._clock()
        over = [key for key, seen in self._keys.items() if seen.held_back and now - seen.opened >= self.window]
        return self._take(over)

    def drain(self) -> list[tuple[Hashable | None, int]]:
        """(key, count) for every key with lines held back, whether its window is over or not."""
        return self._take([key for key, seen in self._keys.items() if seen.held_back])

    def next_due(self) -> float | None:
        """Seconds until the first window with lines held back is over; None when there is none."""
        opened = [seen.opened for seen in self._keys.values() if seen.held_back]
        if not opened and not self._evicted:
            return None
        return max(0.0, min(opened, default=self._clock()) + self.window - self._clock())

    def _take(self, keys: list[Hashable]) -> list[tuple[Hashable | None, int]]:
        counts: list[tuple[Hashable | None, int]] = [(key, self._keys.pop(key).held_back) for key in keys]
        if self._evicted:
            counts.append((None, self._evicted))
            self._evicted = 0
        return counts


def _append(record: logging.LogRecord, note: str) -> None:
    """Adds ``note`` (no % in it) to the end of a record's message."""
    if isinstance(record.msg, str):
        record.msg = record.msg + note  # still a template: the arguments apply as before
    else:
        record.msg, record.args = "%s" + note, (record.getMessage(),)  # an argument: still escaped


# --- secrets ----------------------------------------------------------------------------------------

MIN_SECRET_LENGTH = 4
"""Credentials shorter than this are not masked: blanking every "abc" would make the log unreadable
while hiding nothing worth having (a warning says so when one is configured)."""
PREFIX_LENGTH = 8
"""A credential of at least this many characters is masked from any PREFIX_LENGTH-character start
of it on: a target that cuts its echo short ("Bearer xoxb-12345678…") must not leak that start.
A shorter one (MIN_SECRET_LENGTH and up) is masked only whole, and only where it stands as a word,
so that a 4-character password does not blank every word that contains its letters."""

_WORD_CHAR = re.compile("[0-9A-Za-z]")
# Query parameters whose value is a credential whatever it looks like (Teams' sig=, Azure's code=)
_SECRET_QUERY_NAMES = re.compile(r"(?i)sig|signature|token|.*secret.*|.*password.*|.*key|code|auth|access_token|apikey")
# How JSON and Python write a character with a short escape; escape_controls writes \n \r \t too
_SHORT_ESCAPES = {"/": "\\/", '"': '\\"', "\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _hex(value: int, width: int) -> str:
    """A regex for ``value`` in hex digits of either case."""
    return "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in f"{value:0{width}X}")


def _char_forms(c: str) -> list[str]:
    """Regexes for the ways a character of a secret can appear in an echoed text: as itself,
    percent-encoded (its UTF-8 bytes, hex in either case; ``+`` for a space), JSON- or
    Python-escaped (``\\uXXXX``, ``\\/``, ``\\"``), or as escape_controls writes it (``\\x1b``).
    Each begins with a literal character, which lets the regex engine skip ahead cheaply."""
    code = ord(c)
    forms = [re.escape(c), "".join("%" + _hex(b, 2) for b in c.encode("utf-8", "surrogatepass"))]
    if code < 0x10000:
        forms.append(r"\\u" + _hex(code, 4))
    else:
        high, low = divmod(code - 0x10000, 0x400)
        forms.append(r"\\u" + _hex(0xD800 + high, 4) + r"\\u" + _hex(0xDC00 + low, 4))
    if c in _SHORT_ESCAPES:
        forms.append(re.escape(_SHORT_ESCAPES[c]))
    if code < 0x20 or 0x7F <= code < 0xA0:
        forms.append(r"\\x" + _hex(code, 2))
    if c == " ":
        forms.append(r"\+")
    return forms


_UNITS: dict[str, re.Pattern[str]] = {}


def _unit(c: str) -> re.Pattern[str]:
    """One character of a secret in any of its forms."""
    unit = _UNITS.get(c)
    if unit is None:
        unit = _UNITS[c] = re.compile("(?:" + "|".join(_char_forms(c)) + ")")
    return unit


def _credential_like(text: str) -> bool:
    """True for a URL part that looks like a key rather than a word: long, and mixing at least two
    of lower case, upper case and digits (``XXXXslackpath``, a hex id), unlike ``services``,
    ``workflows`` or ``2016-06-01``."""
    if len(text) < PREFIX_LENGTH:
        return False
    classes = (any(ch.islower() for ch in text), any(ch.isupper() for ch in text), any(ch.isdigit() for ch in text))
    return sum(classes) >= 2


@dataclass(frozen=True, slots=True)
class _Secret:
    """One text to mask. ``prefix``: its first PREFIX_LENGTH characters on count (a credential);
    otherwise it counts whole only (a URL's path, which begins with public words); ``word``: only
    where it stands alone (a short credential)."""

    text: str
    prefix: bool = False
    word: bool = False

    @property
    def head(self) -> str:
        """What must be present for a match: the prefix, or the whole text."""
        return self.text[:PREFIX_LENGTH] if self.prefix else self.text

    def match_end(self, text: str, start: int, head: re.Pattern[str]) -> int | None:
        """Where this secret (or, for a prefix secret, as much of it as is there) ends when it
        starts at ``start`` in ``text``; None when it does not start there."""
        m = head.match(text, start)
        if m is None:
            return None
        end = m.end()
        if self.prefix:
            for c in self.text[PREFIX_LENGTH:]:
                more = _unit(c).match(text, end)
                if more is None:
                    break
                end = more.end()
        if self.word and (_word_before(text, start) or _WORD_CHAR.match(text, end)):
            return None
        return end


_ESCAPE_BEFORE = re.compile(r"(?:%[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|\\x[0-9A-Fa-f]{2})\Z")


def _word_before(text: str, start: int) -> bool:
    """True when a word character comes right before ``start``, other than the end of an escape
    (``%20abcd`` and ``\\u0020abcd`` hold the word ``abcd``)."""
    if start == 0 or not _WORD_CHAR.match(text, start - 1):
        return False
    return _ESCAPE_BEFORE.search(text, max(0, start - 6), start) is None


def _plain(value: str) -> list[_Secret]:
    if len(value) < MIN_SECRET_LENGTH:
        return []
    if len(value) < PREFIX_LENGTH:
        return [_Secret(value, word=True)]
    return [_Secret(value, prefix=True)]


def secret_parts(value: str) -> list[_Secret]:
    """What to mask for one configured credential. A credential URL (a Slack webhook, a Teams
    workflow with ``sig=``) counts by its secret parts: a user's password, the path and query as
    wholes, and each part that looks like a key (a path segment such as Slack's last one, the
    value of ``sig=``) from its first characters on. Its scheme, host and plain words such as
    ``services`` are no secret, and stay readable."""
    if not value.lower().startswith(("http://", "https://")):
        return _plain(value)
    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return _plain(value)
    found: list[_Secret] = _plain(unquote(password)) if password else []
    segments = [unquote(s) for s in parts.path.split("/") if s]
    secret_segments = [s for s in segments if _credential_like(s)]
    found += [_Secret(s, prefix=True) for s in secret_segments]
    path = parts.path.lstrip("/")
    if secret_segments and len(path) >= PREFIX_LENGTH:
        found.append(_Secret(path))  # the whole path goes, not only its key-like segments
    secret_query = False
    for piece in parts.query.split("&"):
        name, _, raw = piece.partition("=")
        item = unquote(raw)
        if _SECRET_QUERY_NAMES.fullmatch(name) or _credential_like(item):
            found += _plain(item)
            secret_query = secret_query or len(item) >= MIN_SECRET_LENGTH
    if secret_query and len(parts.query) >= PREFIX_LENGTH:
        found.append(_Secret(parts.query))
    return found


@dataclass(frozen=True, slots=True)
class _Masks:
    """The compiled form of a set of secrets: one regex that finds where any may start, and for
    each secret the regex of its head, to tell which one it is and how far it goes."""

    find: re.Pattern[str]
    secrets: tuple[tuple[_Secret, re.Pattern[str]], ...]

    @classmethod
    def build(cls, secrets: Iterable[_Secret]) -> _Masks | None:
        compiled: list[tuple[_Secret, re.Pattern[str]]] = []
        starts: list[str] = []
        for secret in sorted(set(secrets), key=lambda s: (-len(s.text), s.text)):
            rest = "".join(_unit(c).pattern for c in secret.head[1:])
            # one alternative for each form of the first character, so that every alternative
            # begins with a literal and the engine can skip to the characters that may start one
            alternatives = [form + rest for form in _char_forms(secret.head[0])]
            starts += alternatives
            compiled.append((secret, re.compile("(?:" + "|".join(alternatives) + ")")))
        if not compiled:
            return None
        return cls(re.compile("|".join(starts)), tuple(compiled))

    def redact(self, text: str) -> str:
        out: list[str] = []
        done = 0
        pos = 0
        while (m := self.find.search(text, pos)) is not None:
            start = m.start()
            ends = [end for secret, head in self.secrets if (end := secret.match_end(text, start, head)) is not None]
            if not ends:  # a short secret inside a longer word: not this one
                pos = start + 1
                continue
            out += (text[done:start], REDACTED)
            done = pos = max(ends)
        if not out:
            return text
        out.append(text[done:])
        return "".join(out)


class RedactSecrets(logging.Filter):
    """Masks every configured credential in a record's final message, and in any text figrelay
    shows or stores (``redact``), with ``***``: as it is, URL-encoded (``%2F``, ``+``),
    JSON-escaped (``\\/``, ``\\u002B``), or cut short from its first PREFIX_LENGTH characters on.

    Fast on the common text that holds no secret: all secrets are one regex whose every branch
    starts with a literal character, so the engine skips to the few places a secret could start.
    """

    def __init__(self) -> None:
        super().__init__()
        self._masks: _Masks | None = None  # replaced whole, so a logging thread sees old or new
        self._warned: frozenset[int] = frozenset()

    def update(self, secrets: Iterable[str]) -> None:
        values = {s for s in secrets if s}
        short = frozenset(len(s) for s in values if len(s) < MIN_SECRET_LENGTH)
        if short - self._warned:
            logging.getLogger("figrelay.logs").warning(
                "a configured credential has only %s characters: figrelay masks credentials of %d characters or more in its "
                "logs and outputs, so this one is not; use a longer secret",
                " or ".join(str(n) for n in sorted(short)), MIN_SECRET_LENGTH,
            )
        self._warned = short
        self._masks = _Masks.build(part for value in values for part in secret_parts(value))

    def redact(self, text: str) -> str:
        masks = self._masks
        return text if masks is None or not text else masks.redact(text)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._masks is None:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean = self.redact(message)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        for name, value in _record_fields(record).items():
            if isinstance(value, str):
                setattr(record, name, self.redact(value))
        if clean != message:
            record.msg, record.args = clean, None
        return True


redactor = RedactSecrets()


# --- formats ----------------------------------------------------------------------------------------

# json.dumps(ensure_ascii=False) writes these raw; a terminal or a JavaScript reader takes them as
# control codes or line breaks
_JSON_RAW_CONTROLS = re.compile("[\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


class JsonLines(logging.Formatter):
    """One JSON object per line, for journald, Loki and friends."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def _stamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second[0]:  # strftime once a second, not once a line
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self._stamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in _record_fields(record).items():
            entry[name] = _field_value(value)
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        line = json.dumps(entry, ensure_ascii=False)
        return _JSON_RAW_CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def make_handler(fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """figrelay's log handler: the format, then its filters in order: limit repeats (on the
    template, before anything is formatted), escape the arguments, redact the final message."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    for f in (RepeatLimiter(), EscapeControls(), redactor):
        handler.addFilter(f)
    return handler


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    # Neither format shows the caller's file and line, the thread or the process: not looking
    # them up saves a third of what a line costs (the daemon writes one or two per event)
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt)]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
