"""Logging set-up: plain lines for a terminal or JSON lines for a log store, and the filters that
keep every line honest and the log bounded:

- ``RepeatLimiter``: a warning or error that repeats (a flood of malformed requests, asyncio
  failing to accept while file descriptors run out) is written at most 5 times per 10 seconds;
  the next one written carries the count of those held back. INFO and below always pass.
- ``EscapeControls``: control characters in a record's arguments (event data: a ClientName with
  a newline or an ANSI escape) are written as escapes (``\\n``, ``\\x1b``, ``\\u2028``), so a sender
  can neither forge a log line nor drive the terminal. The message template, figrelay's own
  text, keeps its newlines.
- ``RedactSecrets``: every configured secret in the final message becomes ``***``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import IO, Any

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


class EscapeControls(logging.Filter):
    """Escapes control characters in a record's arguments, its non-text message and its exception
    text; a text message is figrelay's own template and keeps its intended line breaks."""

    def filter(self, record: logging.LogRecord) -> bool:
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


def _append(record: logging.LogRecord, note: str) -> None:
    """Adds ``note`` (no % in it) to the end of a record's message."""
    if isinstance(record.msg, str):
        record.msg = record.msg + note  # still a template: the arguments apply as before
    else:
        record.msg, record.args = "%s" + note, (record.getMessage(),)  # an argument: still escaped


# --- secrets ----------------------------------------------------------------------------------------


class RedactSecrets(logging.Filter):
    """Replaces each known secret in a record's final message with ``***``."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: tuple[str, ...] = ()

    def update(self, secrets: Iterable[str]) -> None:
        # longest first, so a secret that contains another is blanked whole
        self._secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        clean = self.redact(message)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
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

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
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
    root = logging.getLogger()
    root.handlers[:] = [make_handler(fmt)]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
