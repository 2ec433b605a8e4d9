"""Byte sizes in configuration: a number of bytes or a string such as ``256MB``, ``1GB``,
``512MiB``. The units are listed where sizes are documented: README.md and config.example.yaml.

kB, MB, GB and TB are powers of 1000 and KiB, MiB, GiB and TiB powers of 1024, as the SI and IEC
define them: ``256MB`` is 256,000,000 bytes. Units are read without regard to case (``256mb``),
since nobody means millibits in a configuration file; a bare ``K``, ``M`` or ``G`` is refused
because people mean either of the two meanings by it.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Annotated, Any

from pydantic import BeforeValidator

UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
FORMS = "write e.g. 256MB, 1GB or 512MiB (units: B, kB, MB, GB, TB, and KiB, MiB, GiB, TiB), or a number of bytes"


def parse_size(value: Any) -> int:
    """Bytes from a whole number or a string such as ``256MB``, ``1.5GB``, ``512MiB``, ``4096``.
    Raises ValueError saying what is wrong and which forms are allowed."""
    if isinstance(value, bool):  # YAML's yes/no: an int to Python, never a size to a person
        raise ValueError(f"must be a size, not {str(value).lower()}; {FORMS}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"must be a size, not {value}; {FORMS}")
    if isinstance(value, (int, float)):
        exact = Fraction(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ValueError(f"must not be negative, got {value!r}; {FORMS}")
        m = _SIZE.fullmatch(text)
        if m is None:
            raise ValueError(f"{value!r} is not a size; {FORMS}")
        number, unit = m.groups()
        if unit.lower() in ("k", "m", "g", "t"):
            raise ValueError(
                f"{value!r} is ambiguous: write {number}{unit.upper()}B for powers of 1000 or {number}{unit.upper()}iB for powers of 1024"
            )
        if unit and unit.lower() not in UNITS:
            raise ValueError(f"{value!r} has an unknown unit {unit!r}; {FORMS}")
        # exact arithmetic: 1.1MB is 1,100,000 bytes, not 1100000.0000000002
        exact = Fraction(number) * UNITS.get(unit.lower(), 1)
    else:
        raise ValueError(f"must be a size; {FORMS}")
    if exact < 0:
        raise ValueError(f"must not be negative, got {value!r}; {FORMS}")
    if exact.denominator != 1:
        raise ValueError(f"{value!r} is not a whole number of bytes; {FORMS}")
    return int(exact)


def format_size(size: int, *, exact: bool = True) -> str:
    """A size as people write it in the configuration (``256MB``, ``512MiB``, ``1.5GB``): the
    largest unit that gives it exactly (a decimal unit with at most one decimal), else bytes.
    ``exact=False``, for a measured size: the largest decimal unit, to three digits (``12.3MB``)."""
    if not exact:
        for unit, factor in (("B", 1), ("kB", 1000), ("MB", 1000**2), ("GB", 1000**3)):
            if float(f"{size / factor:.3g}") < 1000:  # 999,999 bytes rounds to 1MB, not 1e+03kB
                return f"{size / factor:.3g}{unit}"
        return f"{size / 1000**4:.3g}TB" if size < 1000**5 else f"{size // 1000**4}TB"
    for unit, factor in (("TB", 1000**4), ("TiB", 1024**4), ("GB", 1000**3), ("GiB", 1024**3), ("MB", 1000**2), ("MiB", 1024**2), ("kB", 1000), ("KiB", 1024)):
        if size < factor:
            continue
        if unit.endswith("iB") and size % factor == 0:
            return f"{size // factor}{unit}"
        if not unit.endswith("iB") and (size * 10) % factor == 0:
            return f"{size / factor:g}{unit}"
    return f"{size}B"


Size = Annotated[int, BeforeValidator(parse_size)]
"""A pydantic field type: ``max_bytes: Size = 256 * 1000**2`` accepts ``268435456``, ``"256MB"``,
``"512MiB"``."""
