"""Samplers of the OpenTelemetry specification, by their `OTEL_TRACES_SAMPLER` names (sans-IO).

    always_on                  every trace
    always_off                 none
    traceidratio               a share of traces, decided by the trace id alone, so every
                               process that sees the trace decides alike (OTEL_TRACES_SAMPLER_ARG,
                               0..1, default 1.0)
    parentbased_always_on      as the parent says; a root (no parent): always_on   (the default)
    parentbased_always_off     as the parent says; a root: always_off
    parentbased_traceidratio   as the parent says; a root: traceidratio

`should_sample(parent_sampled, trace_id)`: `parent_sampled` is None for a root span, else the
parent's sampled flag. TraceIdRatio compares the trace id's lower 64 bits with
`ratio * 2**64`, as the OpenTelemetry SDKs do (a ratio sampled by another SDK agrees).

No clock, no randomness of its own, no I/O.
"""

from __future__ import annotations

from typing import Protocol

SAMPLER_NAMES = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
DEFAULT_SAMPLER = "parentbased_always_on"
_LOW64 = (1 << 64) - 1


class Sampler(Protocol):
    description: str

    def should_sample(self, parent_sampled: bool | None, trace_id: int) -> bool: ...


class AlwaysOn:
    description = "always_on"

    def should_sample(self, parent_sampled: bool | None, trace_id: int) -> bool:
        return True


class AlwaysOff:
    description = "always_off"

    def should_sample(self, parent_sampled: bool | None, trace_id: int) -> bool:
        return False


class TraceIdRatio:
    __slots__ = ("bound", "description", "ratio")

    def __init__(self, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"a sampling ratio is between 0 and 1, not {ratio}")
        self.ratio = ratio
        self.bound = round(ratio * (_LOW64 + 1))
        self.description = f"traceidratio({ratio})"

    def should_sample(self, parent_sampled: bool | None, trace_id: int) -> bool:
        return (trace_id & _LOW64) < self.bound


class ParentBased:
    """The parent's decision when there is a parent (remote or local alike); `root`'s otherwise."""

    __slots__ = ("description", "root")

    def __init__(self, root: Sampler) -> None:
        self.root = root
        self.description = f"parentbased_{root.description}"

    def should_sample(self, parent_sampled: bool | None, trace_id: int) -> bool:
        if parent_sampled is None:
            return self.root.should_sample(None, trace_id)
        return parent_sampled


def make_sampler(name: str, ratio: float = 1.0) -> Sampler:
    """The sampler named `name` (one of SAMPLER_NAMES); ValueError for another name or a ratio
    outside 0..1."""
    base = name.removeprefix("parentbased_")
    root: Sampler
    if base == "always_on":
        root = AlwaysOn()
    elif base == "always_off":
        root = AlwaysOff()
    elif base == "traceidratio":
        root = TraceIdRatio(ratio)
    else:
        raise ValueError(f"unknown sampler {name!r}")
    return ParentBased(root) if name != base else root
