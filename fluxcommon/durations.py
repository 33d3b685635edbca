"""Human durations ("250ms", "5s", "1m30s", "2h") to and from milliseconds, bounded.

Every duration of the config and the API goes through `parse_duration_ms`, which refuses
negative, non-finite and over-long values (at most `MAX_DURATION_MS`, one year, unless the
caller gives a tighter `max_ms`, e.g. what a uint32 millisecond field of the snapshot holds).
"""

from __future__ import annotations

import math
import re

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")

MAX_DURATION_MS = 365 * 86_400_000
"""The longest duration anything takes: one year."""


def parse_duration_ms(value: object, max_ms: int = MAX_DURATION_MS) -> int:
    """Milliseconds in `value`: a number (seconds) or a string such as "1m30s"; at most `max_ms`.

    Raises ValueError with a message fit for an API error.
    """
    ms = _parse_ms(value)
    if ms > max_ms:
        raise ValueError(f"a duration may be at most {format_duration_ms(max_ms)}")
    return round(ms)


def _parse_ms(value: object) -> int | float:
    if isinstance(value, bool):
        raise ValueError("a duration must be a string like '5s' or a number of seconds")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number; {value!r} is not")
        if value < 0:
            raise ValueError("a duration must not be negative")
        return value * 1000
    if not isinstance(value, str):
        raise ValueError("a duration must be a string like '5s' or a number of seconds")
    text = value.strip().lower()
    if not text:
        raise ValueError("empty duration")
    if len(text) > 64:
        raise ValueError("bad duration: longer than 64 characters")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * 1000
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"bad duration {value!r}: use a number with ms, s, m, h or d (e.g. '500ms', '1m30s')")
    return total


def format_duration_ms(ms: int) -> str:
    """The shortest exact text for `ms`: 1500 -> "1500ms", 90000 -> "90s", 3600000 -> "1h"."""
    if ms == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
