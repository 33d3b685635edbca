"""Load: a node's request counters (its load reports), and what can be done with them.

Nodes report cumulative counters since they started (dataplane.discovery.load); a
`Load` is one such report, or the difference of two, or the sum over several nodes.
Plain data and arithmetic: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flux.v1 import discovery_pb2

MAX_ROUTES = 500  # per load report kept (the node sends its busiest routes)


def load_from_proto(report: discovery_pb2.LoadReport) -> dict[str, Any]:
    """A load report as the node registry keeps it (JSON-able)."""
    return {
        "requests": int(report.requests),
        "server_errors": int(report.server_errors),
        "bounds": [float(b) for b in report.latency_bounds],
        "counts": [int(c) for c in report.latency_counts],
        "seconds": float(report.latency_sum_seconds),
        "routes": {
            name[:255]: [int(r.requests), int(r.server_errors)] for name, r in list(report.routes.items())[:MAX_ROUTES]
        },
    }


@dataclass(frozen=True)
class Load:
    requests: int = 0
    server_errors: int = 0
    bounds: tuple[float, ...] = ()
    counts: tuple[int, ...] = ()
    seconds: float = 0.0

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> Load:
        if not data:
            return cls()
        return cls(
            requests=int(data.get("requests", 0)),
            server_errors=int(data.get("server_errors", 0)),
            bounds=tuple(float(b) for b in data.get("bounds", ())),
            counts=tuple(int(c) for c in data.get("counts", ())),
            seconds=float(data.get("seconds", 0.0)),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "server_errors": self.server_errors,
            "bounds": list(self.bounds),
            "counts": list(self.counts),
            "seconds": self.seconds,
        }

    def since(self, earlier: Load | None) -> Load:
        """What was counted after `earlier`; all of it when the node restarted in between."""
        if earlier is None or self.requests < earlier.requests or self.server_errors < earlier.server_errors:
            return self
        counts = self.counts
        if earlier.counts and len(earlier.counts) == len(counts) and earlier.bounds == self.bounds:
            counts = tuple(max(0, a - b) for a, b in zip(counts, earlier.counts, strict=True))
        return Load(
            requests=self.requests - earlier.requests,
            server_errors=self.server_errors - earlier.server_errors,
            bounds=self.bounds,
            counts=counts,
            seconds=max(0.0, self.seconds - earlier.seconds),
        )

    def __add__(self, other: Load) -> Load:
        if not self.counts:
            counts, bounds = other.counts, other.bounds
        elif not other.counts or other.bounds != self.bounds or len(other.counts) != len(self.counts):
            counts, bounds = self.counts, self.bounds  # another histogram layout: keep ours
        else:
            counts, bounds = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)), self.bounds
        return Load(
            requests=self.requests + other.requests,
            server_errors=self.server_errors + other.server_errors,
            bounds=bounds,
            counts=counts,
            seconds=self.seconds + other.seconds,
        )

    @property
    def error_rate(self) -> float:
        return self.server_errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float | None:
        """The q-quantile of the request durations in seconds (linear within a bucket), or None."""
        total = sum(self.counts)
        if not total or not self.bounds:
            return None
        rank = q * total
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i >= len(self.bounds):
                    return self.bounds[-1]  # the overflow bucket: at least the last bound
                low = self.bounds[i - 1] if i else 0.0
                return low + (self.bounds[i] - low) * ((rank - seen) / n)
            seen += n
        return self.bounds[-1]


def total(loads: Iterable[Load]) -> Load:
    out = Load()
    for load in loads:
        out = out + load
    return out
