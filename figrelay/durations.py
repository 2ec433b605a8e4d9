"""Durations in configuration: a number of seconds or a string such as ``250ms``, ``90s``, ``5m``,
``1h30m``, ``2d``. The units (ms, s, m, h, d) are listed where durations are documented: README.md
and config.example.yaml; a test checks that each unit is there."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_EXAMPLES = "write e.g. 250ms, 30s, 5m, 24h or 1h30m (units: ms, s, m, h, d), or a number of seconds"


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``250ms``, ``90s``, ``5m``, ``1h30m``, ``2d``."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration; {_EXAMPLES}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.replace(" ", "")
        # a sign belongs to the whole duration ("-5s"), so it is read before the parts
        negative = text.startswith("-")
        body = text[1:] if negative or text.startswith("+") else text
        parts = _DURATION.findall(body)
        if not body or "".join(n + u for n, u in parts) != body:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"{value!r} is not a duration; {_EXAMPLES}") from None
        else:
            seconds = sum(float(n) * UNITS[u] for n, u in parts)
            seconds = -seconds if negative else seconds
    else:
        raise ValueError(f"must be a duration; {_EXAMPLES}")
    if seconds < 0:
        raise ValueError(f"must not be negative, got {value!r}; a duration is 0 or more, e.g. 30s")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A pydantic field type for plugin options: ``timeout: Duration = 10.0`` accepts ``10``, ``"10s"``, ``"1m"``."""


def _request_timeout(seconds: float) -> float:
    if not 0 < seconds <= 600:
        raise ValueError("must be more than 0 and at most 10m")
    return seconds


Timeout = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_request_timeout)]
"""A plugin's network timeout: a Duration above 0 and at most 10 minutes."""
