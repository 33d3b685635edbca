"""Endpoint health state machine: active-check thresholds and passive outlier ejection.

Owns the rules that move an `EndpointState` between healthy / unhealthy (active checks,
with hysteresis thresholds: the verdict shared with the control plane and the agent,
`fluxcommon.health`) and between ejected / not ejected (passive outlier detection
on proxied requests, with exponential back-off and a cap on the ejected share of a
cluster). Every function keeps `EndpointState.available` up to date.

Must not: import trio, grpc, socket or any I/O library, read the clock, or run checks or
timers itself. The caller performs the checks, passes `now` (monotonic seconds) in, and
uses `next_release` to schedule its `release_ejections` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dataplane.balancing.endpoint import EndpointState
from fluxcommon.health import Thresholds, judge

ActiveCheckPolicy = Thresholds
"""Streak lengths needed to flip an endpoint's active health: the shared `fluxcommon.health` ones."""


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    """Passive ejection: failures in a row, back-off bounds (seconds), ejected-share cap.

    Two streaks, as Envoy's outlier detection counts them: `consecutive_failures` gateway
    failures (no response: connect failure, reset, timeout; or a 502, 503 or 504), and,
    when `consecutive_5xx` is above 0, any 5xx response or gateway failure. A response
    below 500 ends both streaks; a 5xx that is no gateway failure (a 500, say) ends the
    gateway-failure streak only.

    `max_ejection_percent` 0 disables ejection; otherwise one endpoint of a cluster of two
    or more may always be ejected, further ones only while the ejected share stays within
    the percentage.
    """

    consecutive_failures: int = 5
    consecutive_5xx: int = 0  # 0: 5xx responses never eject (only gateway failures do)
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: int = 50


def record_check(ep: EndpointState, ok: bool, policy: ActiveCheckPolicy, detail: str = "") -> bool:
    """Record one active check result; True if `ep.healthy` changed.

    The shared verdict (`fluxcommon.health.judge`) over the endpoint's counts: healthy ->
    unhealthy after `unhealthy_threshold` failures in a row, unhealthy -> healthy after
    `healthy_threshold` successes in a row.
    """
    ep.last_check = detail or ("ok" if ok else "failed")
    state, ep.checks_ok, ep.checks_failed, changed = judge(
        "healthy" if ep.healthy else "unhealthy", ep.checks_ok, ep.checks_failed, ok, policy
    )
    if changed:
        ep.healthy = state == "healthy"
        ep._refresh()
    return changed


def reset_checks(ep: EndpointState, healthy: bool = True) -> bool:
    """Forget the active-check streaks and set `healthy` (e.g. when checks are turned off).

    True if `ep.healthy` changed.
    """
    changed = ep.healthy != healthy
    ep.healthy = healthy
    ep.checks_ok = 0
    ep.checks_failed = 0
    ep._refresh()
    return changed


def may_eject(ejected: int, size: int, max_percent: int) -> bool:
    """Whether one more endpoint may be ejected from a cluster of `size` with `ejected` out."""
    if max_percent <= 0 or size <= 0:
        return False
    if (ejected + 1) * 100 <= max_percent * size:
        return True
    return ejected == 0 and size >= 2


def ejection_duration(ejections: int, policy: OutlierPolicy) -> float:
    """Seconds of the next ejection after `ejections` previous ones: doubling, capped."""
    return min(policy.max_ejection_s, policy.base_ejection_s * 2.0 ** min(ejections, 60))


def record_request(
    ep: EndpointState,
    ok: bool,
    now: float,
    policy: OutlierPolicy,
    cluster: Sequence[EndpointState],
    status: int = 0,
) -> bool:
    """Record the outcome of one proxied request (passive health); True if `ep` got ejected.

    `ok` False is a gateway failure (see OutlierPolicy); `status` is the upstream's response
    status, 0 when there was none (callers that pass no status report gateway failures
    only, and a 5xx streak then never grows).

    `policy.consecutive_failures` gateway failures in a row, or `policy.consecutive_5xx`
    5xx in a row (when above 0), eject `ep` until `now + base_ejection_s * 2**ejections`
    (capped at `max_ejection_s`), unless that would eject too large a share of `cluster`
    (the endpoint's whole cluster, `ep` included). A success resets the streaks, and one
    more than `max_ejection_s` after the last release also forgets the back-off.
    """
    ep.total_requests += 1
    counts_5xx = policy.consecutive_5xx > 0
    if ok and not (counts_5xx and status >= 500):  # a success (a 500 is one unless 5xx count)
        ep.consecutive_failures = 0
        ep.consecutive_5xx = 0
        if ep.ejections and ep.ejected_until <= 0.0 and now - ep.released_at > policy.max_ejection_s:
            ep.ejections = 0
        return False
    ep.total_failures += 1
    # a 5xx that is no gateway failure (500, 501, 505...) ends the gateway-failure streak
    ep.consecutive_failures = 0 if ok else ep.consecutive_failures + 1
    if counts_5xx:
        ep.consecutive_5xx += 1
    if ep.ejected_until > 0.0:
        return False
    gateway_run = not ok and ep.consecutive_failures >= max(1, policy.consecutive_failures)
    run_5xx = counts_5xx and ep.consecutive_5xx >= policy.consecutive_5xx
    if not (gateway_run or run_5xx):
        return False
    ejected = sum(1 for other in cluster if other.ejected_until > 0.0)
    if not may_eject(ejected, len(cluster), policy.max_ejection_percent):
        return False
    until = now + ejection_duration(ep.ejections, policy)
    if until <= 0.0 or until <= now:
        return False  # a zero-length ejection is no ejection
    ep.ejected_until = until
    ep.ejections += 1
    ep.consecutive_failures = 0
    ep.consecutive_5xx = 0
    ep._refresh()
    return True


def release_ejections(cluster: Sequence[EndpointState], now: float) -> list[EndpointState]:
    """Un-eject the endpoints whose `ejected_until` is at or before `now`; returns them."""
    released: list[EndpointState] = []
    for ep in cluster:
        if 0.0 < ep.ejected_until <= now:
            ep.ejected_until = 0.0
            ep.released_at = now
            ep.consecutive_failures = 0
            ep.consecutive_5xx = 0
            ep._refresh()
            released.append(ep)
    return released


def next_release(cluster: Sequence[EndpointState]) -> float | None:
    """The earliest `ejected_until` of the ejected endpoints (when to call
    `release_ejections` next), or None when none is ejected. A value already in the past
    means "release now".
    """
    times = [ep.ejected_until for ep in cluster if ep.ejected_until > 0.0]
    return min(times) if times else None
