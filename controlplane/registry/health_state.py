"""The health of one actively checked registry instance: its verdict and history, no I/O.

The verdict is the shared threshold state machine (`fluxcommon.health.Verdict`, the same
as the node's and the agent's): states `unknown`, `healthy`, `unhealthy`, changed exactly
when a run of results reaches the threshold of the other state. A new instance, or one
seen when the checker starts, starts from the health the registry holds. Changing the
check (thresholds, type, target) keeps the state but restarts the counts.

`InstanceHealth` adds a bounded history of recent results (time, ok, latency, detail);
times are passed in, there is no clock here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from fluxcommon.health import State, Verdict

__all__ = ["HISTORY", "CheckResult", "InstanceHealth", "State", "Verdict"]

HISTORY = 50
"""Recent results kept per instance."""


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome."""

    time: float  # unix seconds, when the check started
    ok: bool
    latency_ms: float
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"time": self.time, "ok": self.ok, "latency_ms": round(self.latency_ms, 3), "detail": self.detail}


class InstanceHealth:
    """A `Verdict` plus the last `history` results of one instance."""

    def __init__(self, healthy_threshold: int, unhealthy_threshold: int, state: State = "unknown",
                 history: int = HISTORY) -> None:  # fmt: skip
        self.verdict = Verdict(healthy_threshold, unhealthy_threshold, state)
        self.history: deque[CheckResult] = deque(maxlen=history)

    def record(self, result: CheckResult) -> State | None:
        """Keep `result` and count it; returns the new state when it changed."""
        self.history.append(result)
        return self.verdict.observe(result.ok)

    @property
    def last(self) -> CheckResult | None:
        return self.history[-1] if self.history else None
