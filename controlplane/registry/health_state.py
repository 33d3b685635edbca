"""The health verdict of one actively checked instance: thresholds and history, no I/O.

Theory of operation
-------------------
Each check gives one result, ok or failed. A `Verdict` counts the results of the current
run (`consecutive_ok`, `consecutive_fail`; a result of the other kind starts a new run)
and holds the state the checks have established:

    unknown    no run has reached its threshold yet (a new instance, or just after
               the checker started: it starts from the health the registry holds)
    healthy    the last run to reach its threshold was `healthy_threshold` oks
    unhealthy  the last run to reach its threshold was `unhealthy_threshold` failures

The state changes exactly when a run reaches the threshold of the other state: the
`healthy_threshold`-th ok in a row turns a not-healthy instance healthy, the
`unhealthy_threshold`-th failure in a row turns a not-unhealthy one unhealthy. Longer
runs change nothing more. So between two changes there are at least as many checks as
the threshold of the state changed to: an instance cannot flap faster than its
thresholds allow, whatever its checks return.

Changing the check (thresholds, type, target) keeps the state but restarts the counts.
`InstanceHealth` adds a bounded history of recent results (time, ok, latency, detail);
times are passed in, there is no clock here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

State = Literal["unknown", "healthy", "unhealthy"]

HISTORY = 50
"""Recent results kept per instance."""


class Verdict:
    """The threshold state machine of one instance (see the module docstring)."""

    __slots__ = ("consecutive_fail", "consecutive_ok", "healthy_threshold", "state", "unhealthy_threshold")

    def __init__(self, healthy_threshold: int, unhealthy_threshold: int, state: State = "unknown") -> None:
        if healthy_threshold < 1 or unhealthy_threshold < 1:
            raise ValueError("thresholds must be at least 1")
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.state: State = state
        self.consecutive_ok = 0
        self.consecutive_fail = 0

    def observe(self, ok: bool) -> State | None:
        """Count one result; returns the new state when this result changed it, else None."""
        if ok:
            self.consecutive_ok += 1
            self.consecutive_fail = 0
            if self.state != "healthy" and self.consecutive_ok >= self.healthy_threshold:
                self.state = "healthy"
                return "healthy"
        else:
            self.consecutive_fail += 1
            self.consecutive_ok = 0
            if self.state != "unhealthy" and self.consecutive_fail >= self.unhealthy_threshold:
                self.state = "unhealthy"
                return "unhealthy"
        return None

    def retune(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        """New thresholds (the check changed): keep the state, restart the counts."""
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.consecutive_ok = 0
        self.consecutive_fail = 0


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
