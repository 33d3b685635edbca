"""oauth2: opaque bearer tokens checked by RFC 7662 token introspection.

The node POSTs `token=...&token_type_hint=access_token` to `introspection_url` with
its client credentials (HTTP Basic, RFC 6749 §2.3.1), through httpx on the trio
side (`env.reactor.to_trio`), within `timeout`. Results are cached (SHA-256 of the
token -> result) in an `Introspector` kept in `env.services` per (url, client_id):
an active token until min(its exp, now + cache_ttl), an inactive one for
INACTIVE_TTL seconds. Concurrent requests with the same uncached token share one
introspection call.

Answers: no token -> 401; inactive or expired -> 401 invalid_token; a required scope
missing from the space-separated `scope` -> 403 insufficient_scope; the endpoint
unreachable, slow, or answering nonsense -> 503 (never a hang, never a crash).
The consumer is named by `username`, else `client_id`, else `sub`: a known consumer
of that name, else an anonymous one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

import httpx
import trio

from dataplane.policies.auth.common import (
    MAX_CREDENTIAL_LENGTH,
    MAX_NAME_LENGTH,
    AuthPolicy,
    FetchError,
    TokenSource,
    TtlCache,
    anonymous_consumer,
    check_http_url,
    connection_pool,
    forbidden,
    http_request,
    unauthorized,
    unavailable,
)
from dataplane.policies.base import LocalResponse, PolicyEnv, PolicyResult, RequestContext, TaskSpawner
from fluxcommon.policy_config import OAuth2Config

log = logging.getLogger("flux.policy.oauth2")

CACHE_SIZE = 10_000
INACTIVE_TTL = 10.0  # seconds an inactive answer is trusted
MAX_RESPONSE = 64 * 1024


class Introspection(NamedTuple):
    active: bool
    claims: dict[str, Any]
    fetched_at: float  # monotonic
    expires_at: float  # monotonic: when the token's exp passes (inf when none)


class IntrospectionError(Exception):
    """The introspection endpoint could not give an answer."""


class Introspector:
    """Introspection calls and their cache for one (endpoint, client); lives in env.services."""

    def __init__(
        self, url: str, client_id: str, nursery: TaskSpawner | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = url
        self.client_id = client_id
        self.client_secret = ""
        self.clock = clock  # monotonic seconds: when answers were fetched and expire
        self.cache: TtlCache[bytes, Introspection] = TtlCache(CACHE_SIZE, clock)
        self.calls = 0  # introspection requests sent
        self.errors = 0
        self._inflight: dict[bytes, trio.Event] = {}
        self._pool: httpx.AsyncClient | None = None
        self._nursery = nursery
        self._failing = False

    def authorization(self) -> bytes:
        # RFC 6749 §2.3.1: form-encode the id and secret, then Basic.
        pair = f"{quote(self.client_id, safe='')}:{quote(self.client_secret, safe='')}"
        return b"Basic " + base64.b64encode(pair.encode("utf-8"))

    async def introspect(self, key: bytes, token: str, ttl: float, time_limit: float) -> Introspection:
        """The (possibly shared) answer for `token`; IntrospectionError when there is none."""
        with trio.move_on_after(time_limit) as scope:
            ev = self._inflight.get(key)
            if ev is not None:  # someone asks already: wait for that answer
                await ev.wait()
                hit = self.cache.get(key)
                if hit is not None:
                    return hit
            ev = self._inflight[key] = trio.Event()
            try:
                result = await self._call(token, time_limit)
            finally:
                if self._inflight.get(key) is ev:
                    del self._inflight[key]
                ev.set()
            self.cache.put(key, result, min(result.expires_at, result.fetched_at + ttl))
            return result
        assert scope.cancelled_caught
        self.errors += 1
        raise IntrospectionError(f"no answer within {time_limit:g}s")

    async def _call(self, token: str, time_limit: float) -> Introspection:
        self.calls += 1
        body = urlencode({"token": token, "token_type_hint": "access_token"}).encode("ascii")
        headers = [
            (b"Authorization", self.authorization()),
            (b"Content-Type", b"application/x-www-form-urlencoded"),
            (b"Accept", b"application/json"),
            (b"Content-Length", str(len(body)).encode()),
        ]
        if self._pool is None:
            self._pool = connection_pool(self.url, max_connections=32)
        try:
            status, data = await http_request(
                self._pool, "POST", self.url, headers=headers, body=body, time_limit=time_limit, max_body=MAX_RESPONSE
            )
            if status != 200:
                raise FetchError(f"HTTP {status}")
            try:
                doc = json.loads(data)
            except (ValueError, RecursionError):
                raise FetchError("answer is not JSON") from None
            if not isinstance(doc, dict):
                raise FetchError("answer is not a JSON object")
        except FetchError as exc:
            self.errors += 1
            if not self._failing:
                log.warning("introspection at %s failed: %s", self.url, exc)
                self._failing = True
            raise IntrospectionError(str(exc)) from None
        if self._failing:
            log.warning("introspection at %s works again", self.url)
            self._failing = False
        return _result(doc, self.clock())

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None and self._nursery is not None:
            self._nursery.start_soon(_aclose, pool)


async def _aclose(pool: httpx.AsyncClient) -> None:
    try:
        await pool.aclose()
    except Exception:
        pass


def _result(doc: dict[str, Any], now: float) -> Introspection:
    expires = math.inf
    active = doc.get("active") is True
    exp = doc.get("exp")
    if active and exp is not None:
        if isinstance(exp, int | float) and not isinstance(exp, bool) and math.isfinite(exp):
            expires = now + (exp - time.time())
            if expires <= now:
                active = False  # the server calls it active, its exp says otherwise
        else:
            active = False  # an exp we cannot read: do not guess
    if not active:
        return Introspection(False, {}, now, now + INACTIVE_TTL)
    return Introspection(True, doc, now, expires)


class OAuth2Policy(AuthPolicy):
    """See the module docstring. Sets `ctx.consumer`, `X-Consumer-Name`/`-Groups` upstream,
    and `ctx.vars["oauth2"]` (the introspection claims)."""

    type = "oauth2"

    def __init__(self, name: str, config: OAuth2Config, env: PolicyEnv) -> None:
        super().__init__(name, config.consumer_header)
        self.config = config
        self._env = env
        self._consumers = env.consumers
        self._source = TokenSource(config.from_)
        self._ttl = config.cache_ttl / 1000.0
        self._timeout = max(0.05, config.timeout / 1000.0)
        self._scopes = tuple(config.required_scopes)
        url = check_http_url(config.introspection_url, "introspection_url")
        services = env.services
        self.introspector = services.get(
            ("oauth2", url, config.client_id), lambda: Introspector(url, config.client_id, services.nursery, env.clock)
        )
        self.introspector.client_secret = config.client_secret

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        token = self._source.extract(ctx)
        if token is None:
            return self._deny("missing", unauthorized("Bearer", "missing bearer token"))
        if len(token) > MAX_CREDENTIAL_LENGTH:
            return self._invalid("malformed")
        key = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        hit = self.introspector.cache.get(key, ctx.now)
        if hit is not None and ctx.now < hit.fetched_at + self._ttl:
            return self._decide(ctx, hit, ctx.now)
        if self._env.reactor is None:
            return self._deny("introspection_error", unavailable("token introspection is not available"))
        return self._introspect(ctx, key, token)

    async def _introspect(self, ctx: RequestContext, key: bytes, token: str) -> LocalResponse | None:
        reactor = self._env.reactor
        assert reactor is not None
        try:
            result = await reactor.to_trio(self.introspector.introspect, key, token, self._ttl, self._timeout)
        except Exception:
            resp = unavailable("the authorization server could not check the token, try again later")
            return self._deny("introspection_error", resp)
        return self._decide(ctx, result, self._env.clock())

    def _decide(self, ctx: RequestContext, result: Introspection, now: float) -> LocalResponse | None:
        if not result.active:
            return self._invalid("inactive")
        if now >= result.expires_at:
            return self._invalid("expired")
        claims = result.claims
        if self._scopes:
            scope = claims.get("scope")
            granted = set(scope.split()) if isinstance(scope, str) else set()
            if not granted.issuperset(self._scopes):
                resp = forbidden("the token lacks a required scope", "insufficient_scope", scope=" ".join(self._scopes))
                return self._deny("insufficient_scope", resp)
        name = None
        for field in ("username", "client_id", "sub"):
            value = claims.get(field)
            if isinstance(value, str) and value and len(value) <= MAX_NAME_LENGTH:
                name = value
                break
        consumer = self._consumers.consumers.get(name) if name else None
        if consumer is None:
            consumer = anonymous_consumer(name or "anonymous")
        self._allow(ctx, consumer)
        ctx.vars["oauth2"] = claims
        return None

    def _invalid(self, reason: str) -> LocalResponse:
        message = "token expired" if reason == "expired" else "invalid token"
        return self._deny(reason, unauthorized("Bearer", message, "invalid_token"))
