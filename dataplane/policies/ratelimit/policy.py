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

Headers, as the IETF draft "RateLimit header fields for HTTP" (draft-ietf-httpapi-
ratelimit-headers-06/07) has them, on every answer the policy decides (unless `headers:
false`), admitted or refused:
  RateLimit-Limit      the configured rate (the quota of one window)
  RateLimit-Remaining  requests that would pass right now
  RateLimit-Reset      whole seconds until the quota is whole again (at most the window for
                       sliding windows); on a refusal the same point in time as Retry-After
  RateLimit-Policy     `RATE;w=WINDOW_SECONDS` (`;burst=N` with a burst)
A refusal (429, or the configured status) also carries Retry-After (whole seconds, at least
1). With several rate_limit policies on one request the answer carries the fields of the one
with the fewest remaining (the draft's rule), and a refusal's own. Leaky bucket in queue
mode delays admitted requests on the reactor.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from typing import Any

from dataplane.policies.base import LocalResponse, Policy, PolicyEnv, PolicyResult, RequestContext
from dataplane.policies.ratelimit.algorithms import Decision, Limiter, make_limiter
from dataplane.policies.ratelimit.redis_backend import RedisCall, RedisLimiter, RedisLimiterClient, redacted
from fluxcommon.durations import format_duration_ms
from fluxcommon.policy_config import RateLimitConfig

log = logging.getLogger("flux.ratelimit")

MAX_KEY_LEN = 200
_FIELDS = frozenset({b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset", b"ratelimit-policy"})
_SHOWN = "rate_limit.remaining"
"""ctx.vars key: the Remaining of the RateLimit-* fields on the answer so far (-1: a refusal's)."""


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
        self._policy_header = _policy_field(config)
        self._headers = config.headers
        self._message = f"rate limit exceeded: {config.rate} per {format_duration_ms(config.per)}"
        per = config.per / 1000.0
        self._reset_cap = per if config.algorithm == "sliding_window" else math.inf
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
                return self._ask_redis(call, key, ctx)
            return self._fallback(key, ctx)
        return self._local_result(self.local.acquire(key, ctx.now), ctx)

    def _local_result(self, decision: Decision, ctx: RequestContext) -> PolicyResult:
        if decision.allowed:
            self.allowed += 1
            if self._headers:
                self._publish(ctx, decision)
            if decision.delay > 0.0:
                return self._delayed(decision.delay)
            return None
        self.denied += 1
        return self.reject(decision, ctx)

    async def _delayed(self, delay: float) -> None:
        reactor = self._reactor
        assert reactor is not None, "leaky bucket queue mode needs the reactor"
        await reactor.sleep(delay)
        return None

    async def _ask_redis(self, call: RedisCall, key: str, ctx: RequestContext) -> LocalResponse | None:
        await call.done
        assert self.redis is not None
        decision = self.redis.decision(call)
        if decision is None:
            result = self._fallback(key, ctx, call.error)
            if result is None or type(result) is LocalResponse:
                return result  # type: ignore[return-value]
            return await result  # type: ignore[no-any-return, misc]
        if self._degraded:
            self._degraded = False
            log.warning("rate limit policy %r uses redis at %s again", self.name, self._redis_url())
        if decision.allowed:
            self.allowed += 1
            if self._headers:
                self._publish(ctx, decision)
            if decision.delay > 0.0:
                assert self._reactor is not None
                await self._reactor.sleep(decision.delay)
            return None
        self.denied += 1
        return self.reject(decision, ctx)

    def _fallback(self, key: str, ctx: RequestContext, error: BaseException | None = None) -> PolicyResult:
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
            return self._local_result(self.local.acquire(key, ctx.now), ctx)
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

    def _fields(self, remaining: int, reset_s: int) -> list[tuple[bytes, bytes]]:
        return [
            (b"RateLimit-Limit", self._limit_header),
            (b"RateLimit-Remaining", b"%d" % remaining),
            (b"RateLimit-Reset", b"%d" % reset_s),
            (b"RateLimit-Policy", self._policy_header),
        ]

    def _publish(self, ctx: RequestContext, decision: Decision) -> None:
        """RateLimit-* fields of an admitted request, on the answer it gets: unless an earlier
        rate_limit policy of the request has put fields with fewer remaining there."""
        remaining = decision.remaining
        shown: Any = ctx.vars.get(_SHOWN)
        if shown is not None:
            if shown <= remaining:
                return
            _drop_fields(ctx)
        ctx.vars[_SHOWN] = remaining
        reset_s = max(0, math.ceil(min(decision.reset_after, self._reset_cap) - 1e-6))
        ctx.response_add += self._fields(remaining, reset_s)

    def reject(self, decision: Decision, ctx: RequestContext | None = None) -> LocalResponse:
        """The refusal for `decision`: configured status, Retry-After and RateLimit-* headers,
        RateLimit-Reset naming the same moment as Retry-After (the draft's rule). Fields an
        earlier policy put on `ctx`'s answer give way to these."""
        retry = decision.retry_after
        if retry == math.inf:
            retry = min(decision.reset_after, self._reset_cap)
        retry_s = max(1, math.ceil(retry - 1e-6))
        headers = [(b"Retry-After", b"%d" % retry_s)]
        if self._headers:
            headers += self._fields(decision.remaining, retry_s)
            if ctx is not None:
                if ctx.vars.get(_SHOWN) is not None:
                    _drop_fields(ctx)
                ctx.vars[_SHOWN] = -1
        return LocalResponse.error(self._status, "rate_limited", self._message, headers)

    def stats(self) -> dict[str, int]:
        """Counters for metrics: requests allowed, denied, and decided without Redis."""
        return {"allowed": self.allowed, "denied": self.denied, "fallbacks": self.fallbacks}


def _drop_fields(ctx: RequestContext) -> None:
    ctx.response_add = [(n, v) for n, v in ctx.response_add if n.lower() not in _FIELDS]


def _policy_field(config: RateLimitConfig) -> bytes:
    """RateLimit-Policy: the quota and its window in whole seconds (a window that is no whole
    number of seconds is given as the quota of one second, rounded down, at least 1)."""
    if config.per % 1000 == 0:
        quota, window = config.rate, config.per // 1000
    else:
        quota, window = max(1, config.rate * 1000 // config.per), 1
    bucket = config.algorithm in ("token_bucket", "leaky_bucket")
    burst = f";burst={config.burst}" if config.burst > 0 and bucket else ""
    return f"{quota};w={window}{burst}".encode()


__all__ = ["RateLimitPolicy", "key_function"]
