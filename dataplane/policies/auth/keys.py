"""api_key and basic_auth: credentials the control plane stores hashed.

api_key: the key comes from the configured header (default `apikey`) or, when
`query` is set, that query parameter; its hex SHA-256 names the consumer
(env.consumers.by_api_key). `hide_credentials` (default on) keeps the key from the
upstream (the header is removed, the parameter cut out of the query).

basic_auth: `Authorization: Basic base64(user:password)`, checked against the
consumer's salted PBKDF2 hash. A PBKDF2 check costs tens of milliseconds of CPU,
so it runs in a worker thread (a few at a time, `env.reactor.to_trio` +
`trio.to_thread`), never on the reactor, and successful checks are cached for
VERIFIED_TTL seconds under a keyed hash of user, password and stored hash (a
changed password misses the cache; a wrong password is never cached). Unknown
users cost the same check as known ones, so timing does not tell which exist.

Both answer 401 with a challenge (`ApiKey realm="flux"`, `Basic realm="..."`) and the
same message whether the credential is unknown or wrong.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import time

import trio

from dataplane.policies.auth.common import (
    MAX_CREDENTIAL_LENGTH,
    REALM,
    AuthPolicy,
    TtlCache,
    current_query,
    query_param,
    unauthorized,
    unavailable,
    without_query_param,
)
from dataplane.policies.base import LocalResponse, PolicyEnv, PolicyResult, RequestContext
from fluxcommon.policy_config import ApiKeyConfig, BasicAuthConfig
from fluxcommon.secrets import hash_password, verify_password

VERIFIED_TTL = 300.0  # seconds a verified user:password is trusted without PBKDF2
VERIFIED_CACHE_SIZE = 10_000
HASH_THREADS = 2  # concurrent PBKDF2 checks per worker
HASH_WAIT = 5.0  # longest a request waits for a PBKDF2 slot and check (then 503)


class ApiKeyPolicy(AuthPolicy):
    """Sets `ctx.consumer` and `X-Consumer-Name`/`-Groups` upstream; with hide_credentials
    removes the key header (`ctx.remove_upstream_header`) and parameter (`ctx.query`)."""

    type = "api_key"

    def __init__(self, name: str, config: ApiKeyConfig, env: PolicyEnv) -> None:
        super().__init__(name, config.consumer_header)
        self.config = config
        self._consumers = env.consumers
        self._header = config.header.lower() if config.header else None
        self._query = config.query
        self._hide = config.hide_credentials

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        key = ctx.header(self._header) if self._header else None
        if key is not None:
            key = key.strip()
        if not key and self._query:
            key = query_param(current_query(ctx), self._query)
        if not key:
            return self._deny("missing", unauthorized("ApiKey", "missing API key"))
        if len(key) > MAX_CREDENTIAL_LENGTH:
            return self._invalid("malformed")
        consumer = self._consumers.by_api_key.get(hashlib.sha256(key.encode("utf-8")).hexdigest())
        if consumer is None:
            return self._invalid("invalid")
        if self._hide:
            if self._header:
                ctx.remove_upstream_header(self._header)
            if self._query:
                query = current_query(ctx)
                if query:
                    stripped = without_query_param(query, self._query)
                    if stripped != query:
                        ctx.query = stripped
        self._allow(ctx, consumer)
        return None

    def _invalid(self, reason: str) -> LocalResponse:
        return self._deny(reason, unauthorized("ApiKey", "invalid API key"))


class _BasicVerifier:
    """State shared by basic_auth policies across snapshots (env.services)."""

    def __init__(self) -> None:
        self.cache: TtlCache[bytes, bool] = TtlCache(VERIFIED_CACHE_SIZE)
        self.secret = os.urandom(32)  # keys the cache so it holds no plain fast hash of passwords
        self.limiter = trio.CapacityLimiter(HASH_THREADS)
        self.checks = 0  # PBKDF2 checks run

    def key(self, username: str, password: str, stored: str) -> bytes:
        mac = hmac.new(self.secret, digestmod=hashlib.sha256)
        for part in (username, password, stored):
            data = part.encode("utf-8")
            mac.update(len(data).to_bytes(4, "big") + data)  # length-prefixed: no ambiguous joins
        return mac.digest()

    def check(self, password: str, stored: str) -> bool:
        """PBKDF2 check; an empty `stored` (unknown user) checks a dummy hash and fails."""
        self.checks += 1
        if not stored:
            verify_password(password, _dummy_hash())
            return False
        try:
            return verify_password(password, stored)
        except (ValueError, TypeError):  # a stored hash the node cannot read
            return False

    async def check_in_thread(self, password: str, stored: str) -> bool:
        with trio.fail_after(HASH_WAIT):
            return await trio.to_thread.run_sync(self.check, password, stored, limiter=self.limiter)


@functools.cache
def _dummy_hash() -> str:
    """A hash checked for unknown users, so they take as long as known ones."""
    return hash_password(os.urandom(16).hex())


class BasicAuthPolicy(AuthPolicy):
    """Sets `ctx.consumer` and `X-Consumer-Name`/`-Groups` upstream; with hide_credentials
    removes `Authorization`. A cache miss returns a coroutine (PBKDF2 in a thread)."""

    type = "basic_auth"

    def __init__(self, name: str, config: BasicAuthConfig, env: PolicyEnv) -> None:
        super().__init__(name, config.consumer_header)
        self.config = config
        self._env = env
        self._consumers = env.consumers
        self._realm = config.realm or REALM
        self._hide = config.hide_credentials
        self.verifier = env.services.get(("basic_auth", "verified"), _BasicVerifier)

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        value = ctx.header("proxy-authorization" if ctx.forward else "authorization")
        if value is None:
            return self._deny("missing", self._challenge("missing credentials"))
        scheme, _, encoded = value.strip().partition(" ")
        if scheme.lower() != "basic":
            return self._deny("missing", self._challenge("missing credentials"))
        credentials = _decode(encoded.strip())
        if credentials is None:
            return self._deny("malformed", self._challenge("malformed credentials"))
        username, password = credentials
        entry = self._consumers.by_basic_user.get(username)
        stored = entry[1] if entry is not None else ""
        key = self.verifier.key(username, password, stored)
        if entry is not None and self.verifier.cache.get(key, ctx.now):
            return self._accept(ctx, username)
        if self._env.reactor is None:  # no reactor (tools, tests): check inline
            ok = self.verifier.check(password, stored)
            return self._verified(ctx, username, ok, key, ctx.now)
        return self._check_in_thread(ctx, username, password, stored, key)

    async def _check_in_thread(
        self, ctx: RequestContext, username: str, password: str, stored: str, key: bytes
    ) -> LocalResponse | None:
        reactor = self._env.reactor
        assert reactor is not None
        try:
            ok = await reactor.to_trio(self.verifier.check_in_thread, password, stored)
        except Exception:
            return self._deny("busy", unavailable("credentials could not be checked, try again later"))
        return self._verified(ctx, username, ok, key, time.monotonic())

    def _verified(self, ctx: RequestContext, username: str, ok: bool, key: bytes, now: float) -> LocalResponse | None:
        if not ok or username not in self._consumers.by_basic_user:
            return self._deny("invalid", self._challenge("invalid credentials"))
        self.verifier.cache.put(key, True, now + VERIFIED_TTL)
        return self._accept(ctx, username)

    def _accept(self, ctx: RequestContext, username: str) -> None:
        consumer = self._consumers.by_basic_user[username][0]
        if self._hide:
            ctx.remove_upstream_header("authorization")
        self._allow(ctx, consumer)
        ctx.vars["basic_user"] = username
        return None

    def _challenge(self, message: str) -> LocalResponse:
        return unauthorized("Basic", message, realm=self._realm)


def _decode(encoded: str) -> tuple[str, str] | None:
    """(username, password) from base64 `user:password`, or None when malformed."""
    if not encoded or len(encoded) > MAX_CREDENTIAL_LENGTH:
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    username, sep, password = text.partition(":")
    if not sep or not username:
        return None
    return username, password
