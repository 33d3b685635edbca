"""The rate_limit policy: keys, per-worker share, 429 headers, on_redis_error, state across rebuilds."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
import trio

from dataplane.http.request import RequestHead
from dataplane.policies.base import Consumer, LocalResponse, PolicyEnv, RequestContext, SharedServices
from dataplane.policies.ratelimit import RateLimitPolicy
from dataplane.policies.ratelimit.algorithms import Decision, FixedWindow, LeakyBucket, TokenBucket
from dataplane.policies.ratelimit.policy import key_function
from dataplane.reactor import Reactor
from fluxcommon.policy_config import RateLimitConfig, parse_policy_config


def ctx(
    ip: str = "10.0.0.1",
    *,
    now: float = 100.0,
    route: str = "orders",
    headers: dict[str, str] | None = None,
    consumer: str | None = None,
) -> RequestContext:
    head = RequestHead()
    head.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    c = RequestContext(head, ip, "main", route, now)
    if consumer is not None:
        c.consumer = Consumer(consumer)
    return c


def config(**kw: Any) -> RateLimitConfig:
    return parse_policy_config("rate_limit", kw)  # type: ignore[return-value]


def policy(env: PolicyEnv | None = None, name: str = "rl", **kw: Any) -> RateLimitPolicy:
    return RateLimitPolicy(name, config(**kw), env or PolicyEnv())


def headers(resp: LocalResponse) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in resp.headers}


# -- keys ----------------------------------------------------------------------------------------


def test_key_extraction() -> None:
    assert key_function("ip")(ctx("1.2.3.4")) == "1.2.3.4"
    proxied = ctx("10.9.9.9")
    proxied.vars["client_ip"] = "203.0.113.7"  # resolved by ip_acl from a trusted proxy's X-Forwarded-For
    assert key_function("ip")(proxied) == "203.0.113.7"
    assert key_function("consumer")(ctx(consumer="alice")) == "alice"
    assert key_function("consumer")(ctx()) == "-"
    assert key_function("route")(ctx(route="users")) == "users"
    assert key_function("header:X-Tenant")(ctx(headers={"x-tenant": "acme"})) == "acme"
    assert key_function("header:X-Tenant")(ctx(headers={"X-TENANT": "acme"})) == "acme"
    assert key_function("header:X-Tenant")(ctx()) == "-"
    both = key_function(["consumer", "ip", "header:X-Tenant"])
    assert both(ctx("1.1.1.1", consumer="bob", headers={"x-tenant": "t1"})) == "bob|1.1.1.1|t1"
    # parts are escaped: a header with "|" cannot pose as another combination
    two = key_function(["header:A", "header:B"])
    assert two(ctx(headers={"a": "x|y", "b": "z"})) != two(ctx(headers={"a": "x", "b": "y|z"}))
    long_key = key_function("header:X-Tenant")(ctx(headers={"x-tenant": "t" * 5000}))
    assert long_key.startswith("sha1:") and len(long_key) < 100


def test_keys_limit_separately() -> None:
    p = policy(rate=1, per="60s", key="header:X-Api-Client")
    assert p.on_request(ctx(headers={"x-api-client": "a"})) is None
    assert p.on_request(ctx(headers={"x-api-client": "b"})) is None
    assert isinstance(p.on_request(ctx(headers={"x-api-client": "a"})), LocalResponse)
    assert isinstance(p.on_request(ctx()), type(None))  # "-" is its own key
    assert isinstance(p.on_request(ctx()), LocalResponse)


# -- worker share, responses -------------------------------------------------------------------


def test_each_worker_enforces_its_share() -> None:
    p = policy(PolicyEnv(workers=4), rate=10, per="60s")  # ceil(10 / 4) = 3 per worker
    assert p.local_rate == 3
    got = [p.on_request(ctx()) for _ in range(4)]
    assert got[:3] == [None, None, None] and isinstance(got[3], LocalResponse)
    assert policy(PolicyEnv(workers=8), rate=3).local_rate == 1  # at least 1
    shared_burst = policy(PolicyEnv(workers=4), rate=10, burst=10)
    assert shared_burst.local_burst == 3
    assert isinstance(shared_burst.local, TokenBucket) and shared_burst.local.capacity == 3


def test_rejection_carries_retry_after_and_ratelimit_headers() -> None:
    p = policy(rate=2, per="10s")  # token bucket: 2 tokens, one back every 5 s
    assert p.on_request(ctx(now=50.0)) is None
    assert p.on_request(ctx(now=50.0)) is None
    resp = p.on_request(ctx(now=51.0))
    assert isinstance(resp, LocalResponse)
    assert resp.status == 429 and resp.reason == "rate_limited"
    assert json.loads(resp.body)["error"] == "rate_limited"
    h = headers(resp)
    assert h == {  # RateLimit-Reset names the moment Retry-After does (issue 14)
        "Retry-After": "4", "RateLimit-Limit": "2", "RateLimit-Remaining": "0", "RateLimit-Reset": "4",
        "RateLimit-Policy": "2;w=10",
    }  # fmt: skip
    assert (p.allowed, p.denied, p.fallbacks) == (2, 1, 0)
    assert p.stats() == {"allowed": 2, "denied": 1, "fallbacks": 0}


def test_headers_round_up_and_status_is_configurable() -> None:
    p = policy(PolicyEnv(workers=2), rate=10, per="1s", algorithm="fixed_window", status=503)
    for _ in range(5):  # the worker's share
        assert p.on_request(ctx(now=7.9)) is None
    resp = p.on_request(ctx(now=7.9))
    assert isinstance(resp, LocalResponse) and resp.status == 503
    h = headers(resp)
    assert h["Retry-After"] == "1"  # 0.1 s, but at least 1
    assert h["RateLimit-Limit"] == "10"  # the policy's rate, not the worker's share
    assert h["RateLimit-Reset"] == "1"
    assert h["RateLimit-Remaining"] == "0"


def test_reject_formats_a_decision() -> None:
    p = policy(rate=5)
    resp = p.reject(Decision(False, 5, 0, reset_after=2.2, retry_after=float("inf")))
    assert headers(resp)["Retry-After"] == "3"  # "never" for this cost: the reset time instead
    assert headers(resp)["RateLimit-Reset"] == "3"


@pytest.mark.parametrize(
    ("kw", "kind"),
    [
        ({"algorithm": "leaky_bucket", "leaky_mode": "queue", "max_queue_delay": "250ms"}, LeakyBucket),
        ({"algorithm": "fixed_window"}, FixedWindow),
    ],
)
def test_config_reaches_the_limiter(kw: dict[str, Any], kind: type) -> None:
    p = policy(rate=4, per="2s", **kw)
    assert isinstance(p.local, kind)
    assert p.local.per == 2.0 and p.local.rate == 4
    if kind is LeakyBucket:
        assert p.local.mode == "queue" and p.local._max_delay == 0.25


def test_leaky_queue_mode_delays_on_the_reactor() -> None:
    p_env: dict[str, Any] = {}
    delays: list[float] = []

    async def main() -> None:
        reactor = Reactor()
        async with trio.open_nursery() as n:
            await n.start(reactor.run)
            env = PolicyEnv(reactor=reactor)
            p = p_env["p"] = policy(
                env, rate=20, per="1s", burst=3, algorithm="leaky_bucket", leaky_mode="queue", max_queue_delay="120ms"
            )
            done = trio.Event()

            async def requests() -> None:
                now = time.monotonic()
                for _ in range(5):
                    result = p.on_request(ctx(now=now))
                    start = time.monotonic()
                    if result is not None and type(result) is not LocalResponse:
                        result = await result  # type: ignore[misc]
                    delays.append(time.monotonic() - start)
                    p_env.setdefault("results", []).append(result)
                done.set()

            reactor.spawn(requests())
            with trio.fail_after(5):
                await done.wait()
            n.cancel_scope.cancel()

    trio.run(main)
    results = p_env["results"]
    # one per 50 ms: waits 0, 50, 100 ms; the 4th would wait 150 ms > 120 ms. The lower bounds are
    # the queue's promise; the upper ones only say "not a different slot" (a loaded machine wakes late).
    assert results[:3] == [None, None, None]
    assert isinstance(results[3], LocalResponse) and isinstance(results[4], LocalResponse)
    assert delays[0] < 0.04
    assert 0.04 <= delays[1] < 0.3 and 0.09 <= delays[2] < 0.35


# -- state across config pushes ------------------------------------------------------------------


def test_state_survives_a_rebuild_with_the_same_config() -> None:
    services = SharedServices()
    env = PolicyEnv(services=services)
    services.begin()
    first = policy(env, rate=2, per="60s")
    assert first.on_request(ctx()) is None
    assert first.on_request(ctx()) is None
    services.retain()
    # the next snapshot: same policy, same config
    services.begin()
    again = policy(env, rate=2, per="60s")
    services.retain()
    assert again.local is first.local
    assert isinstance(again.on_request(ctx()), LocalResponse)
    # a changed config starts afresh; the old limiter is dropped
    services.begin()
    changed = policy(env, rate=3, per="60s")
    services.retain()
    assert changed.local is not first.local
    assert changed.on_request(ctx()) is None
    assert len([k for k in services._objects if k[0] == "rate_limit.local"]) == 1
    # the same config under another name is another limit
    assert policy(env, name="other", rate=2, per="60s").local is not first.local


# -- Redis scope without Redis: on_redis_error ---------------------------------------------------


def redis_policy(mode: str, **kw: Any) -> RateLimitPolicy:
    # no nursery: the client cannot run, so it is down from the start and every request falls back
    kw.setdefault("rate", 2)
    kw.setdefault("per", "60s")
    return policy(
        PolicyEnv(), name=f"rl-{mode}", scope="redis", redis="redis://:s3cret@127.0.0.1:1", on_redis_error=mode, **kw
    )


def test_on_redis_error_allow(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="flux.ratelimit")
    p = redis_policy("allow")
    assert p.client is not None and p.client.state == "down"
    assert [p.on_request(ctx()) for _ in range(5)] == [None] * 5
    assert (p.allowed, p.denied, p.fallbacks) == (5, 0, 5)
    said = [r.getMessage() for r in caplog.records if "falls back to allow" in r.getMessage()]
    assert len(said) == 1
    assert "s3cret" not in said[0] and "127.0.0.1:1" in said[0]


def test_on_redis_error_deny() -> None:
    p = redis_policy("deny", status=429)
    resp = p.on_request(ctx())
    assert isinstance(resp, LocalResponse)
    assert resp.status == 429 and resp.reason == "rate_limit_unavailable"
    assert headers(resp)["Retry-After"] == "1"
    assert (p.allowed, p.denied, p.fallbacks) == (0, 1, 1)


def test_on_redis_error_local_uses_the_local_limiter() -> None:
    p = redis_policy("local")
    got = [p.on_request(ctx()) for _ in range(3)]
    assert got[:2] == [None, None]
    assert isinstance(got[2], LocalResponse) and got[2].reason == "rate_limited"
    assert (p.allowed, p.denied, p.fallbacks) == (2, 1, 3)


def test_redis_scope_needs_a_url() -> None:
    with pytest.raises(ValueError, match="redis"):
        policy(rate=1, scope="redis")


def test_one_redis_client_per_url() -> None:
    env = PolicyEnv()
    a = policy(env, name="a", rate=1, scope="redis", redis="redis://127.0.0.1:1")
    b = policy(env, name="b", rate=1, scope="redis", redis="redis://127.0.0.1:1", algorithm="fixed_window")
    c = policy(env, name="c", rate=1, scope="redis", redis="redis://127.0.0.1:2")
    assert a.client is b.client and a.client is not c.client
    assert a.redis is not None and a.redis.key_name("k") == "flux:rl:a:tb:k"
    assert b.redis is not None and b.redis.key_name("k") == "flux:rl:b:fw:k"
