"""Canary analysis: the canaries' 5xx rate and latency against the rest's.

`judge(canary, reference, criteria, final=...)` compares two `Load`s counted over the same
bake window and says pass, fail or inconclusive, with the numbers and a sentence an
operator reads in `fluxctl` and `GET /api/v1/rollouts/{id}`. The 5xx rule is checked on
every tick of the bake (a clearly broken canary is rolled back at once), latency at its end.
Plain data: no clock, no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from controlplane.rollouts.load import Load

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Criteria:
    """When a canary fails. Every field is a query parameter of `POST /api/v1/apply`."""

    max_error_increase: float = 0.05  # the canaries' 5xx share may exceed the rest's by this much (5 points)
    latency_quantile: float = 0.9
    max_latency_ratio: float = 1.5  # and their latency quantile the rest's by this factor...
    latency_slack: float = 0.05  # ...and by this many seconds (small differences never fail)
    min_requests: int = 20  # fewer canary requests in the bake: too little traffic to judge
    ack_timeout: float = 30.0  # seconds a released node has to ACK or NACK

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> Criteria:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)


def _pct(rate: float) -> str:
    return f"{rate * 100:.1f}%"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def judge(canary: Load, reference: Load, criteria: Criteria, *, final: bool, against: str = "the rest") -> Verdict:
    """Compare the canaries' counters of the bake window with the reference's."""
    q = criteria.latency_quantile
    numbers: dict[str, Any] = {
        "canary": {"requests": canary.requests, "server_errors": canary.server_errors,
                   "error_rate": canary.error_rate, f"p{q * 100:g}": canary.quantile(q)},
        "reference": {"requests": reference.requests, "server_errors": reference.server_errors,
                      "error_rate": reference.error_rate, f"p{q * 100:g}": reference.quantile(q)},
        "against": against,
    }  # fmt: skip
    if canary.requests < criteria.min_requests:
        return Verdict(
            "inconclusive",
            f"{canary.requests} request(s) reached the canaries, fewer than the {criteria.min_requests} "
            "needed to compare 5xx rate and latency",
            numbers,
        )
    compared = reference.requests >= criteria.min_requests
    base_rate = reference.error_rate if compared else 0.0
    if canary.error_rate > base_rate + criteria.max_error_increase:
        base = (
            f"{_pct(base_rate)} ({reference.server_errors}/{reference.requests}) on {against}"
            if compared
            else f"0% (too little traffic on {against} to compare)"
        )
        return Verdict(
            "fail",
            f"5xx rate of the canaries {_pct(canary.error_rate)} ({canary.server_errors}/{canary.requests}) "
            f"against {base}: more than {criteria.max_error_increase * 100:g} points above",
            numbers,
        )
    label = f"p{q * 100:g}"
    q_canary, q_ref = canary.quantile(q), reference.quantile(q) if compared else None
    slower = (
        q_canary is not None
        and q_ref is not None
        and q_canary > q_ref * criteria.max_latency_ratio
        and q_canary - q_ref > criteria.latency_slack
    )
    if final and slower:
        return Verdict(
            "fail",
            f"{label} latency of the canaries {_ms(q_canary)} against {_ms(q_ref)} on {against}: more than "
            f"{criteria.max_latency_ratio:g}x and {_ms(criteria.latency_slack)} slower",
            numbers,
        )
    ref_text = f"{_pct(reference.error_rate)} and {_ms(q_ref)} on {against}"
    if not compared:
        ref_text = f"too little traffic on {against}"
    return Verdict(
        "pass",
        f"canaries: 5xx {_pct(canary.error_rate)}, {label} {_ms(q_canary)} over {canary.requests} requests; {ref_text}",
        numbers,
    )
