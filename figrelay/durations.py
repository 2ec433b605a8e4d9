"""Durations in configuration: a number of seconds or a string such as ``90s``, ``5m``, ``1h30m``."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``90s``, ``5m``, ``1h30m``, ``2d``."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 30s, 5m, 24h")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.replace(" ", "")
        parts = _DURATION.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            try:
                seconds = float(text)
            except ValueError:
                raise ValueError(f"{value!r} is not a duration; write e.g. 30s, 5m, 24h or 1h30m") from None
        else:
            seconds = sum(float(n) * _UNIT[u] for n, u in parts)
    else:
        raise ValueError("must be a duration such as 30s, 5m, 24h")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A pydantic field type for plugin options: ``timeout: Duration = 10.0`` accepts ``10``, ``"10s"``, ``"1m"``."""


def _request_timeout(seconds: float) -> float:
    if not 0 < seconds <= 600:
        raise ValueError("must be more than 0 and at most 10m")
    return seconds


Timeout = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_request_timeout)]
"""A plugin's network timeout: a Duration above 0 and at most 10 minutes."""
