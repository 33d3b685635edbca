"""Human durations ("250ms", "5s", "1m30s", "2h") to and from milliseconds."""

from __future__ import annotations

import re

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration_ms(value: object) -> int:
    """Milliseconds in `value`: a number (seconds) or a string such as "1m30s".

    Raises ValueError with a message fit for an API error.
    """
    if isinstance(value, bool):
        raise ValueError("a duration must be a string like '5s' or a number of seconds")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration must not be negative")
        return round(value * 1000)
    if not isinstance(value, str):
        raise ValueError("a duration must be a string like '5s' or a number of seconds")
    text = value.strip().lower()
    if not text:
        raise ValueError("empty duration")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return round(float(text) * 1000)
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"bad duration {value!r}: use a number with ms, s, m, h or d (e.g. '500ms', '1m30s')")
    return round(total)


def format_duration_ms(ms: int) -> str:
    """The shortest exact text for `ms`: 1500 -> "1500ms", 90000 -> "90s", 3600000 -> "1h"."""
    if ms == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_MS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
