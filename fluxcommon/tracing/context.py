"""W3C Trace Context (https://www.w3.org/TR/trace-context/): `traceparent` and `tracestate`,
parsed strictly and written back (sans-IO).

    traceparent: 00-<trace-id: 32 lower-case hex>-<parent-id: 16 lower-case hex>-<flags: 2 hex>
    tracestate:  key=value[,key=value]*   (at most 32 list-members; bounded to 512 characters)

What this module owns
---------------------
- `parse_traceparent(value)`: a `SpanContext`, or None for anything that is not a valid header
  (absent, empty, upper-case hex, an all-zero id, version ff, a wrong length, two headers joined
  by a comma...). A caller treats None as "no parent": a new trace starts. Never raises, whatever
  the input (a fuzz test holds it to that).
- `parse_tracestate(value)`: the list passed on unchanged when it is valid and short enough,
  bounded as the specification says when it is long (entries over 128 characters go first, then
  entries from the end), "" when it is malformed (a vendor may drop it whole; we do).
- `format_traceparent(...)`: the header for a span of ours; the sampled flag is our decision.
- New ids: random, never zero (`IdSource`, seeded from the OS; tests pass their own).

What it must not do
-------------------
No sockets, no clock, no logging: the front ends and the control plane call it with header
values and use what it returns.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

SAMPLED = 0x01
MAX_TRACESTATE_MEMBERS = 32
MAX_TRACESTATE_LENGTH = 512  # what we pass on at most (the specification's SHOULD-propagate size)
LONG_MEMBER = 128  # list-members longer than this are the first to go when the list is too long

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_KEY_CHARS = r"[a-z0-9_\-*/]"
_MEMBER = re.compile(
    rf"(?:[a-z]{_KEY_CHARS}{{0,255}}|[a-z0-9]{_KEY_CHARS}{{0,240}}@[a-z]{_KEY_CHARS}{{0,13}})"  # key
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"  # value: no trailing space
)
_OWS = " \t"


@dataclass(frozen=True, slots=True)
class SpanContext:
    """What crosses a process boundary: ids, the sampled flag and the vendors' tracestate."""

    trace_id: int  # 128 bits, never 0
    span_id: int  # 64 bits, never 0
    flags: int = 0
    tracestate: str = ""

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    @property
    def traceparent(self) -> str:
        return format_traceparent(self.trace_id, self.span_id, self.sampled)


def parse_traceparent(value: str | bytes | None) -> SpanContext | None:
    """The parent in a `traceparent` value, or None when it is absent or not valid."""
    if not value:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    value = value.strip(_OWS)
    if len(value) < 55:
        return None
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version = m.group(1)
    if version == "ff":
        return None
    if version == "00":
        if len(value) != 55:
            return None
    elif len(value) > 55 and value[55] != "-":  # a later version may add fields after a "-"
        return None
    trace_id = int(m.group(2), 16)
    span_id = int(m.group(3), 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, int(m.group(4), 16) & SAMPLED)


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def parse_tracestate(value: str | bytes | None) -> str:
    """The tracestate to pass on: `value` itself when valid and at most 512 characters, the list
    bounded when longer, "" when absent or malformed (a bad member, a repeated key, more than 32
    members)."""
    if not value:
        return ""
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return ""
    members: list[str] = []
    keys: set[str] = set()
    for raw in value.split(","):
        member = raw.strip(_OWS)
        if not member:
            continue  # empty list-members are allowed, and dropped
        if _MEMBER.fullmatch(member) is None:
            return ""
        key = member.partition("=")[0]
        if key in keys:
            return ""
        keys.add(key)
        members.append(member)
        if len(members) > MAX_TRACESTATE_MEMBERS:
            return ""
    stripped = value.strip(_OWS)
    if len(stripped) <= MAX_TRACESTATE_LENGTH and len(members) == value.count(",") + 1:
        return stripped  # passed on as it came
    return _bounded(members)


def _bounded(members: list[str]) -> str:
    """Join `members`, dropping long ones (over 128 characters) from the end first, then any from
    the end, until the list fits in MAX_TRACESTATE_LENGTH."""
    kept = list(members)

    def length() -> int:
        return sum(len(m) for m in kept) + max(0, len(kept) - 1)

    while length() > MAX_TRACESTATE_LENGTH:
        for i in range(len(kept) - 1, -1, -1):
            if len(kept[i]) > LONG_MEMBER:
                del kept[i]
                break
        else:
            kept.pop()
    return ",".join(kept)


class IdSource:
    """Random trace and span ids (never zero). A Mersenne Twister seeded from the OS, as
    OpenTelemetry's SDKs do: ids must be unique, not secret."""

    __slots__ = ("_bits",)

    def __init__(self, seed: int | None = None) -> None:
        self._bits = random.Random(seed).getrandbits

    def trace_id(self) -> int:
        bits = self._bits
        tid = bits(128)
        while not tid:
            tid = bits(128)
        return tid

    def span_id(self) -> int:
        bits = self._bits
        sid = bits(64)
        while not sid:
            sid = bits(64)
        return sid
