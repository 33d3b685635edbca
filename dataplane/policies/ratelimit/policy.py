"""The rate_limit policy: pick the key, ask the limiter (local or Redis), answer 429 with headers.

Keys: `ip` (the client IP an ip_acl policy resolved from trusted proxies, else
the socket peer), `consumer` (the authenticated consumer's name, "-" for
anonymous requests), `route`, `header:NAME` (its first value, "-" when absent),
or a list of these joined with "|" (parts are escaped so lists never collide).
Keys longer than 200 characters are replaced by their SHA-1.

Scope local: each worker enforces ceil(rate / workers) (and ceil(burst / workers))
with a limiter that lives in `env.services`, keyed by the policy's name and
config, so its state survives config pushes that do not change the policy.

Scope redis: the shared limit is decided by a Lua script in Redis (batched
with the other requests' calls by `RedisLimiterClient`). When Redis cannot be
asked, `on_redis_error` decides: `allow` lets the request through, `deny`
refuses it (reason "rate_limit_unavailable"), `local` uses the worker's local
limiter (with the per-worker share of the rate, so each node enforces the
whole rate on its own). Each switch to and from the fallback is logged once;
`fallbacks` counts the requests decided without Redis.

A 429 (or the configured status) carries Retry-After (whole seconds, at least
1), RateLimit-Limit (the configured rate), RateLimit-Remaining and RateLimit-Reset
(whole seconds). Leaky bucket in queue mode delays admitted requests on the reactor.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable

from dataplane.policies.base import LocalResponse, Policy, PolicyEnv, PolicyResult, RequestContext
from dataplane.policies.ratelimit.algorithms import Decision, Limiter, make_limiter
from dataplane.policies.ratelimit.redis_backend import RedisCall, RedisLimiter, RedisLimiterClient, redacted
from fluxcommon.policy_config import RateLimitConfig

log = logging.getLogger("flux.ratelimit")

MAX_KEY_LEN = 200


def _ip(ctx: RequestContext) -> str:
    return ctx.vars.get("client_ip") or ctx.client_ip


def _consumer(ctx: RequestContext) -> str:
    consumer = ctx.consumer
    return consumer.name if consumer is not None else "-"


def _route(ctx: RequestContext) -> str:
    return ctx.route


def _header(name: str) -> Callable[[RequestContext], str]:
    low = name.lower()

    def get(ctx: RequestContext) -> str:
        value = ctx.header(low)
        return "-" if value is None else value

    return get


def _part(spec: str) -> Callable[[RequestContext], str]:
    if spec == "ip":
        return _ip
    if spec == "consumer":
        return _consumer
    if spec == "route":
        return _route
    if spec.startswith("header:"):
        return _header(spec[7:])
    raise ValueError(f"bad rate limit key {spec!r}")


def key_function(spec: str | list[str]) -> Callable[[RequestContext], str]:
    """The function giving a request's rate limit key for `spec` (see the module doc)."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    if not parts:
        raise ValueError("empty rate limit key")
    getters = [_part(p) for p in parts]
    if len(getters) == 1:
        one = getters[0]
        if one is _ip or one is _route or one is _consumer:
            return one
        return lambda ctx: _bounded(one(ctx))

    def combined(ctx: RequestContext) -> str:
        return _bounded("|".join([g(ctx).replace("\\", "\\\\").replace("|", "\\|") for g in getters]))

    return combined


def _bounded(key: str) -> str:
    if len(key) > MAX_KEY_LEN:
        return "sha1:" + hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()
    return key


class RateLimitPolicy(Policy):
    type = "rate_limit"

    def __init__(self, name: str, config: RateLimitConfig, env: PolicyEnv) -> None:
        super().__init__(name)
        self.config = config
        self.allowed = 0
        self.denied = 0
        self.fallbacks = 0
        self._key = key_function(config.key)
        self._reactor = env.reactor
        self._status = config.status
        self._limit_header = str(config.rate).encode()
        self._message = f"rate limit exceeded: {config.rate} per {config.per} ms"
        per = config.per / 1000.0
        workers = max(1, env.workers)
        self.local_rate = max(1, math.ceil(config.rate / workers))
        self.local_burst = math.ceil(config.burst / workers) if config.burst > 0 else 0
        params = config.model_dump_json()

        def local_limiter() -> Limiter:
            return make_limiter(
                config.algorithm,
                self.local_rate,
                per,
                self.local_burst,
                leaky_mode=config.leaky_mode,
                max_delay=config.max_queue_delay / 1000.0,
                sliding_mode=config.sliding_mode,
            )

        self.local: Limiter = env.services.get(("rate_limit.local", name, params, workers), local_limiter)
        self.redis: RedisLimiter | None = None
        self.client: RedisLimiterClient | None = None
        self._on_error = config.on_redis_error
        self._degraded = False
        if config.scope == "redis":
            if not config.redis:
                raise ValueError("scope redis needs config.redis (a redis:// URL)")
            url = config.redis
            reactor = env.reactor
            services = env.services

            def make_client() -> RedisLimiterClient:
                client = RedisLimiterClient(url, reactor)
                client.start(services.nursery)
                return client

            self.client = services.get(("rate_limit.redis", url), make_client)
            self.redis = RedisLimiter(
                self.client,
                name,
                config.algorithm,
                config.rate,
                per,
                config.burst,
                prefix=config.prefix,
                leaky_mode=config.leaky_mode,
                max_delay=config.max_queue_delay / 1000.0,
                sliding_mode=config.sliding_mode,
            )

    # -- the hot path ---------------------------------------------------------------------

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        key = self._key(ctx)
        redis = self.redis
        if redis is not None:
            call = redis.submit(key)
            if call is not None:
                return self._ask_redis(call, key, ctx.now)
            return self._fallback(key, ctx.now)
        return self._local_result(self.local.acquire(key, ctx.now))

    def _local_result(self, decision: Decision) -> PolicyResult:
        if decision.allowed:
            self.allowed += 1
            if decision.delay > 0.0:
                return self._delayed(decision.delay)
            return None
        self.denied += 1
        return self.reject(decision)

    async def _delayed(self, delay: float) -> None:
        reactor = self._reactor
        assert reactor is not None, "leaky bucket queue mode needs the reactor"
        await reactor.sleep(delay)
        return None

    async def _ask_redis(self, call: RedisCall, key: str, now: float) -> LocalResponse | None:
        await call.done
        assert self.redis is not None
        decision = self.redis.decision(call)
        if decision is None:
            result = self._fallback(key, now, call.error)
            if result is None or type(result) is LocalResponse:
                return result  # type: ignore[return-value]
            return await result  # type: ignore[no-any-return, misc]
        if self._degraded:
            self._degraded = False
            log.warning("rate limit policy %r uses redis at %s again", self.name, self._redis_url())
        if decision.allowed:
            self.allowed += 1
            if decision.delay > 0.0:
                assert self._reactor is not None
                await self._reactor.sleep(decision.delay)
            return None
        self.denied += 1
        return self.reject(decision)

    def _fallback(self, key: str, now: float, error: BaseException | None = None) -> PolicyResult:
        self.fallbacks += 1
        if not self._degraded:
            self._degraded = True
            client = self.client
            why = str(error) if error is not None else (client.last_error if client is not None else "")
            log.warning(
                "redis at %s unreachable; rate limit policy %r falls back to %s (%s)",
                self._redis_url(), self.name, self._on_error, why or "no connection",
            )  # fmt: skip
        mode = self._on_error
        if mode == "local":
            return self._local_result(self.local.acquire(key, now))
        if mode == "allow":
            self.allowed += 1
            return None
        self.denied += 1
        return LocalResponse.error(
            self._status,
            "rate_limit_unavailable",
            "rate limit cannot be checked right now",
            [(b"Retry-After", b"1")],
        )

    def _redis_url(self) -> str:
        return redacted(self.config.redis or "")

    # -- responses ------------------------------------------------------------------------

    def reject(self, decision: Decision) -> LocalResponse:
        """The refusal for `decision`: configured status, Retry-After and RateLimit-* headers."""
        retry = decision.retry_after
        if retry == math.inf:
            retry = decision.reset_after
        retry_s = max(1, math.ceil(retry - 1e-6))
        reset_s = max(0, math.ceil(decision.reset_after - 1e-6))
        headers = [
            (b"Retry-After", b"%d" % retry_s),
            (b"RateLimit-Limit", self._limit_header),
            (b"RateLimit-Remaining", b"%d" % decision.remaining),
            (b"RateLimit-Reset", b"%d" % reset_s),
        ]
        return LocalResponse.error(self._status, "rate_limited", self._message, headers)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: requests allowed, denied, and decided without Redis."""
        return {"allowed": self.allowed, "denied": self.denied, "fallbacks": self.fallbacks}


__all__ = ["RateLimitPolicy", "key_function"]
