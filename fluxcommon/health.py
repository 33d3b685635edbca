"""The health verdict and the HTTP success rule shared by node, control plane and agent.

Sans-IO and clock-free: callers run the checks (trio on the node and the agent, asyncio on
the control plane) and feed each result in here.

The verdict
-----------
Each check gives one result, ok or failed. A verdict counts the results of the current run
(`consecutive_ok`, `consecutive_fail`; a result of the other kind starts a new run) and
holds the state the checks have established:

    unknown    no run has reached its threshold yet
    healthy    the last run to reach its threshold was `healthy_threshold` oks
    unhealthy  the last run to reach its threshold was `unhealthy_threshold` failures

The state changes exactly when a run reaches the threshold of the other state: the
`healthy_threshold`-th ok in a row turns a not-healthy target healthy, the
`unhealthy_threshold`-th failure in a row turns a not-unhealthy one unhealthy. Longer runs
change nothing more, so a target cannot flap faster than its thresholds allow.

`judge` is the transition as a pure function (the node keeps the counts on its endpoint
state); `Verdict` holds them for callers that want an object (registry, agent).

The success rule
----------------
`StatusRule`: the HTTP statuses a check accepts, as ranges. Each user passes its own
documented default: `HTTP_2XX_3XX` (200-399) on the node and the control plane, `HTTP_2XX`
(200-299) in the tunnel agent, as frp's `healthCheck` does. Where a
config gives statuses (`expected_statuses`, `expect_status`), exactly those are accepted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

State = Literal["unknown", "healthy", "unhealthy"]


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Results in a row needed to turn a target healthy and unhealthy (each at least 1)."""

    healthy_threshold: int = 2
    unhealthy_threshold: int = 3

    def __post_init__(self) -> None:
        if self.healthy_threshold < 1 or self.unhealthy_threshold < 1:
            raise ValueError("thresholds must be at least 1")


class Judged(NamedTuple):
    """The outcome of one result: the state and run counts after it, and whether it changed the state."""

    state: State
    consecutive_ok: int
    consecutive_fail: int
    changed: bool


def judge(state: State, consecutive_ok: int, consecutive_fail: int, ok: bool, thresholds: Thresholds) -> Judged:
    """Count one result `ok` into the run counts of a target in `state` (module docstring)."""
    if ok:
        consecutive_ok, consecutive_fail = consecutive_ok + 1, 0
        if state != "healthy" and consecutive_ok >= thresholds.healthy_threshold:
            return Judged("healthy", consecutive_ok, 0, True)
    else:
        consecutive_ok, consecutive_fail = 0, consecutive_fail + 1
        if state != "unhealthy" and consecutive_fail >= thresholds.unhealthy_threshold:
            return Judged("unhealthy", 0, consecutive_fail, True)
    return Judged(state, consecutive_ok, consecutive_fail, False)


class Verdict:
    """The threshold state machine of one target, counts included (module docstring)."""

    __slots__ = ("consecutive_fail", "consecutive_ok", "state", "thresholds")

    def __init__(self, healthy_threshold: int, unhealthy_threshold: int, state: State = "unknown") -> None:
        self.thresholds = Thresholds(healthy_threshold, unhealthy_threshold)
        self.state: State = state
        self.consecutive_ok = 0
        self.consecutive_fail = 0

    @property
    def healthy_threshold(self) -> int:
        return self.thresholds.healthy_threshold

    @property
    def unhealthy_threshold(self) -> int:
        return self.thresholds.unhealthy_threshold

    def observe(self, ok: bool) -> State | None:
        """Count one result; returns the new state when this result changed it, else None."""
        state, self.consecutive_ok, self.consecutive_fail, changed = judge(
            self.state, self.consecutive_ok, self.consecutive_fail, ok, self.thresholds
        )
        self.state = state
        return state if changed else None

    def retune(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        """New thresholds (the check changed): keep the state, restart the counts."""
        self.thresholds = Thresholds(healthy_threshold, unhealthy_threshold)
        self.consecutive_ok = 0
        self.consecutive_fail = 0


@dataclass(frozen=True, slots=True)
class StatusRule:
    """The HTTP statuses a health check accepts: inclusive (low, high) ranges."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, expected: Iterable[int], default: StatusRule) -> StatusRule:
        """Exactly the statuses `expected` when there are any, else `default`."""
        codes = tuple((int(code), int(code)) for code in expected)
        return cls(codes) if codes else default

    def accepts(self, status: int) -> bool:
        return any(low <= status <= high for low, high in self.ranges)

    def __str__(self) -> str:
        """ "200-399", or "200,204" for single statuses."""
        return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in self.ranges)


HTTP_2XX_3XX = StatusRule(((200, 399),))
"""The node's and the control plane's default: any 2xx or 3xx."""

HTTP_2XX = StatusRule(((200, 299),))
"""The tunnel agent's default: any 2xx (as frp's http health check)."""
