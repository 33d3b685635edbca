"""The circuit breaker on the admin page (/circuit_breakers): `since` and `next_probe_at` are
wall-clock times a reader can compare with a log line (issue 14: `since` was monotonic seconds)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from dataplane.policies.base import PolicyEnv
from dataplane.policies.breaker import CircuitBreakerPolicy
from fluxcommon.policy_config import CircuitBreakerConfig


def _at(text: str) -> float:
    when = datetime.fromisoformat(text)
    assert when.tzinfo is not None, text
    return when.astimezone(UTC).timestamp()


def test_since_and_next_probe_are_wall_clock_times() -> None:
    cfg = CircuitBreakerConfig(failure_threshold=1, open_for="30s")
    policy = CircuitBreakerPolicy("breaker", cfg, PolicyEnv()).scoped("route:api")
    assert policy.breaker is not None
    snap = policy.snapshot()
    assert snap["state"] == "closed"
    assert abs(_at(snap["since"]) - time.time()) < 5
    assert snap["next_probe_at"] is None

    now = time.monotonic()
    permit = policy.breaker.allow(now)
    policy.breaker.record(now, False, 0.01, permit)  # one failure trips it
    snap = policy.snapshot()
    assert snap["state"] == "open"
    assert abs(_at(snap["since"]) - time.time()) < 5
    assert abs(_at(snap["next_probe_at"]) - (time.time() + 30)) < 5
    assert 0 <= snap["in_state_s"] < 5
