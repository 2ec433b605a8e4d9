"""Hook regexes: compiled once at load, searched on the event loop within a time limit.

Fig's filters are .NET regexes, a backtracking engine, and operators use what such engines offer
(lookarounds such as ``^(?!Test)``, backreferences, ``\\p{Lu}``), so figrelay keeps a backtracking
engine rather than a linear one such as RE2, which refuses those. The price of backtracking is
that a pattern such as ``^(a|aa)+$`` takes exponential time on some names, and names come from
whoever can post to Fig. So every search of a pattern that could backtrack is made with the
``regex`` package and its per-call ``timeout``: the search raises TimeoutError instead of holding
the event loop. ``regex`` measures that limit with C's ``clock()``, the process's CPU time (its
other threads included), so a search is not cut short because other processes kept the machine
busy.

The limit costs about a microsecond a search (``clock()`` is a system call), and ``regex``
compiles about four times slower than ``re``. Patterns that cannot backtrack, a literal
(``^Orders``, ``Timeout$``) or ``.*``, skip both: they are compiled with ``re``, whose literal
search is linear, and searched without a limit, so configurations of such hooks, however many,
load and match as fast as before. Everything else is compiled with ``regex`` in its ``VERSION0``
mode, which keeps the semantics of Python's ``re``.
"""

from __future__ import annotations

import re
import weakref
from typing import Annotated

import regex
from pydantic import AfterValidator, BeforeValidator

from .durations import parse_duration

DEFAULT_TIME_LIMIT = 0.005
"""Seconds of CPU time that one hook's regexes may take on one event, all names together."""
MAX_TIME_LIMIT = 0.1


def _time_limit(seconds: float) -> float:
    if not 0 < seconds <= MAX_TIME_LIMIT:
        raise ValueError(f"must be more than 0 and at most {MAX_TIME_LIMIT * 1000:g}ms: matching holds up every other event while it runs")
    return seconds


TimeLimit = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_time_limit)]
"""``intake.regex_timeout``: a duration such as ``5ms``."""

HookPattern = re.Pattern[str] | regex.Pattern[str]
"""What a hook's ``client_regex`` and ``setting_regex`` hold; both have ``pattern`` and ``search``."""

_LITERAL = re.compile(r"\^?(?:[^\\.^$*+?{}\[\]|()]|\\[^A-Za-z0-9])*\$?")
"""An optional ``^``, literal characters or escaped punctuation (``\\.``), an optional ``$``."""


def is_linear(pattern: str) -> bool:
    """Whether searching ``pattern`` takes linear time in any engine: a plain literal, optionally
    anchored, or ``.*``. Conservative: anything else counts as able to backtrack."""
    return pattern == ".*" or _LITERAL.fullmatch(pattern) is not None


_COMPILED: weakref.WeakValueDictionary[str, HookPattern] = weakref.WeakValueDictionary()
"""The patterns some loaded configuration still holds: a reload compiles only its new ones (the
compilers' own caches keep a few hundred patterns, fewer than a large file has)."""


def compile_hook_regex(pattern: str) -> HookPattern:
    """Compile a hook's pattern; raise ValueError with the compiler's message. A pattern that a
    live configuration holds already is that same (immutable) compiled pattern."""
    compiled = _COMPILED.get(pattern)
    if compiled is not None:
        return compiled
    try:
        compiled = re.compile(pattern) if is_linear(pattern) else regex.compile(pattern, regex.VERSION0)
    except (re.error, regex.error) as exc:
        raise ValueError(str(exc)) from None
    _COMPILED[pattern] = compiled
    return compiled


# the two modules number ASCII differently
_RE_TO_REGEX = (
    (re.IGNORECASE, regex.IGNORECASE), (re.MULTILINE, regex.MULTILINE), (re.DOTALL, regex.DOTALL), (re.VERBOSE, regex.VERBOSE), (re.ASCII, regex.ASCII),
)


def time_limited(pattern: HookPattern) -> regex.Pattern[str] | None:
    """The ``regex`` pattern to search with a time limit, or None when ``pattern`` cannot
    backtrack. An ``re`` pattern that could backtrack (a HookConfig built by hand rather than
    loaded) is recompiled with ``regex``, with the same flags."""
    if isinstance(pattern, re.Pattern):
        if is_linear(pattern.pattern):
            return None
        flags = regex.VERSION0
        for re_flag, regex_flag in _RE_TO_REGEX:
            if pattern.flags & re_flag:
                flags |= regex_flag
        return regex.compile(pattern.pattern, flags)
    return pattern


_PLAIN_FLAGS = {re.Pattern: int(re.UNICODE), regex.Pattern: int(regex.VERSION0 | regex.UNICODE)}
"""The flags a pattern compiled from a plain string has: any other (IGNORECASE, MULTILINE, ...)
changes what ``^`` and literal characters match."""
_RUN = re.compile(r"[^\\.^$*+?{}\[\]|()]*")
"""Characters that stand for themselves (outside VERBOSE mode)."""
_OPAQUE = re.compile(r"\(\?[A-Za-z#^-]|\\Q")
"""Inline flags (``regex`` applies them to the whole pattern), comments and ``\\Q...\\E``
quoting: text in which parentheses and ``|`` may not be what they seem."""


def required_prefix(pattern: HookPattern) -> str:
    """A text every name the pattern is found in starts with, or '' when there is none known:
    for ``^Orders(Api|Service)$``, 'Orders'. Conservative: '' unless the pattern starts with
    ``^``, has plain flags, and has no ``|`` outside groups (``^Orders|Payments`` has no prefix)."""
    text = pattern.pattern
    if not text.startswith("^") or pattern.flags != _PLAIN_FLAGS.get(type(pattern)) or _OPAQUE.search(text):
        return ""
    run = _RUN.match(text, 1)
    assert run is not None
    prefix = run.group()
    if text[run.end() : run.end() + 1] in ("*", "+", "?", "{"):
        prefix = prefix[:-1]  # a quantifier (or, in regex, a fuzzy constraint) applies to the last one
    if not prefix or ("|" in text and _top_level_alternation(text)):
        return ""
    return prefix


def _top_level_alternation(text: str) -> bool:
    """Whether ``|`` occurs outside every group and character set (errs towards True)."""
    depth = 0
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            # a set: a ']' right after '[' or '[^' is a member, the next ']' ends it
            i += 1
            if text[i : i + 1] == "^":
                i += 1
            if text[i : i + 1] == "]":
                i += 1
            while i < n and text[i] != "]":
                i += 2 if text[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth = max(depth - 1, 0)
        elif c == "|" and depth == 0:
            return True
        i += 1
    return False


__all__ = ["DEFAULT_TIME_LIMIT", "HookPattern", "TimeLimit", "compile_hook_regex", "is_linear", "required_prefix", "time_limited"]
