"""The circuit_breaker policy: fail fast while an upstream keeps failing.

The decisions are the sans-IO `CircuitBreaker` (dataplane/policies/circuit.py);
this module ties one breaker per scope (a route, or a cluster when the policy is
attached to a cluster) to the request flow: `on_request` takes a permit or
answers with the degradation response (or moves the request to the fallback
cluster), `on_response` records the outcome (5xx = failure; slow calls by
duration), `on_abort` gives the permit back when the client went away. Breakers
live in the node's shared services, so their state survives config pushes
that keep the policy unchanged.

Time: a request's decision reads `ctx.now`; later instants (the response, an abort, the
admin page) come from the clock the node gives (`PolicyEnv.clock`), so tests drive it with a
fake clock. Only the admin page reads the wall clock, to show times a reader can compare
with a log line.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from dataplane.policies.base import LocalResponse, Policy, PolicyEnv, PolicyResult, RequestContext
from dataplane.policies.circuit import CircuitBreaker
from fluxcommon.policy_config import CircuitBreakerConfig


class CircuitBreakerPolicy(Policy):
    type = "circuit_breaker"
    wants_response = True

    def __init__(self, name: str, config: CircuitBreakerConfig, env: PolicyEnv, scope: str = "") -> None:
        super().__init__(name)
        self.config = config
        self.env = env
        self.scope = scope
        self.breaker: CircuitBreaker | None = None
        self.fallback_cluster = config.fallback.cluster if config.fallback else None
        self._slot = f"breaker:{name}:{scope}"
        self.rejected = 0

    def scoped(self, scope: str) -> CircuitBreakerPolicy:
        """This policy bound to the breaker of one route or cluster."""
        bound = CircuitBreakerPolicy(self.name, self.config, self.env, scope)
        key = ("breaker", self.name, getattr(self, "config_key", ""), scope)
        bound.breaker = self.env.services.get(key, lambda: CircuitBreaker(self.config, self.env.clock()))
        return bound

    def _degraded(self) -> LocalResponse:
        fb = self.config.fallback
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in fb.headers.items()] if fb else []
        if fb is not None and (fb.body or fb.headers or fb.status != 503):
            ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"text/plain")
            headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
            return LocalResponse(fb.status, fb.body.encode(), headers, reason="circuit_open", content_type=ctype)
        return LocalResponse.error(503, "circuit_open", f"{self.scope or self.name}: upstream failing, circuit open")

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        breaker = self.breaker
        if breaker is None:
            return None
        permit = breaker.allow(ctx.now)
        if permit:
            ctx.vars[self._slot] = (permit, self.env.clock())
            return None
        self.rejected += 1
        if self.fallback_cluster:
            ctx.vars["cluster"] = self.fallback_cluster
            return None
        return self._degraded()

    def on_response(self, ctx: RequestContext, status: int) -> None:
        entry = ctx.vars.pop(self._slot, None)
        if entry is None or self.breaker is None:
            return
        permit, started = entry
        now = self.env.clock()
        self.breaker.record(now, status < 500, now - started, permit)

    def on_abort(self, ctx: RequestContext) -> None:
        entry = ctx.vars.pop(self._slot, None)
        if entry is not None and self.breaker is not None:
            self.breaker.release(self.env.clock(), entry[0])

    def snapshot(self) -> dict[str, Any]:
        """The breaker's state for the admin page: `since` and `next_probe_at` as wall-clock
        times (ISO 8601, UTC; the core keeps monotonic seconds), durations in seconds."""
        if self.breaker is None:
            return {"policy": self.name, "scope": self.scope}
        return {"policy": self.name, "scope": self.scope, **admin_state(self.breaker, self.env.clock())}


def admin_state(breaker: CircuitBreaker, mono: float) -> dict[str, Any]:
    """One breaker's state for /circuit_breakers: its snapshot at monotonic `mono`, with `since`
    and `next_probe_at` turned into wall-clock times (ISO 8601, UTC)."""
    wall = time.time()
    state = breaker.snapshot(mono)
    for key in ("since", "next_probe_at"):
        if state.get(key) is not None:
            state[key] = _wall_clock(wall - (mono - state[key]))
    return state


def _wall_clock(seconds: float) -> str:
    """Unix seconds as ISO 8601 in UTC, to the millisecond: 2026-12-06T21:30:00.123+00:00."""
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds")
