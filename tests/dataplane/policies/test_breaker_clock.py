"""The circuit_breaker policy reads no clock of its own (issue 18): the request's decision uses
`ctx.now`, the response, an abort and the admin page use `PolicyEnv.clock`. A fake clock drives
slow calls and the open period here, without sleeping."""

from __future__ import annotations

from dataplane.http.request import RequestHead
from dataplane.policies.base import LocalResponse, PolicyEnv, RequestContext
from dataplane.policies.breaker import CircuitBreakerPolicy
from fluxcommon.policy_config import CircuitBreakerConfig


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _ctx(now: float) -> RequestContext:
    return RequestContext(RequestHead(), "127.0.0.1", "public", "api", now)


def test_a_slow_call_is_timed_by_the_given_clock_and_opens_the_breaker() -> None:
    clock = FakeClock()
    cfg = CircuitBreakerConfig(
        failure_threshold=0, min_requests=1, slow_call_ms=500, slow_call_rate=0.0, open_for="30s"
    )
    policy = CircuitBreakerPolicy("cb", cfg, PolicyEnv(clock=clock)).scoped("route:api")

    ctx = _ctx(clock.now)
    assert policy.on_request(ctx) is None
    clock.now += 0.4  # fast enough: the breaker stays closed
    policy.on_response(ctx, 200)
    assert policy.snapshot()["state"] == "closed"

    ctx = _ctx(clock.now)
    assert policy.on_request(ctx) is None
    clock.now += 0.6  # slower than slow_call_ms
    policy.on_response(ctx, 200)
    assert policy.snapshot()["state"] == "open"
    denied = policy.on_request(_ctx(clock.now))
    assert isinstance(denied, LocalResponse) and denied.status == 503

    clock.now += 31  # past open_for: one probe may go
    assert policy.on_request(_ctx(clock.now)) is None
    assert policy.snapshot()["state"] == "half_open"


def test_an_aborted_request_gives_its_permit_back_at_the_given_clock() -> None:
    clock = FakeClock()
    cfg = CircuitBreakerConfig(failure_threshold=1, open_for="10s", half_open_requests=1)
    policy = CircuitBreakerPolicy("cb", cfg, PolicyEnv(clock=clock)).scoped("route:api")
    ctx = _ctx(clock.now)
    policy.on_request(ctx)
    policy.on_response(ctx, 502)  # one failure trips it
    assert policy.snapshot()["state"] == "open"
    clock.now += 11
    probe = _ctx(clock.now)
    assert policy.on_request(probe) is None  # the one probe
    assert isinstance(policy.on_request(_ctx(clock.now)), LocalResponse)  # no second probe
    policy.on_abort(probe)  # the client went away: the probe's permit comes back
    assert policy.on_request(_ctx(clock.now)) is None
