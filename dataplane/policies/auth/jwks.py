"""JWKS key sets fetched from a URL, cached and refreshed in the background.

One `JwksCache` per URL lives in `env.services` (so it outlives snapshots and is
shared by every jwt policy naming that URL). A trio task in the services nursery
fetches the document (HTTP(S) GET with httpx, bounded time and size, parsed
with `jwt.PyJWKSet`) every `refresh` seconds. A token whose `kid` is unknown may
trigger an early refetch (`refresh(kid)`, awaited by the policy through
`reactor.to_trio`), at most once per `MIN_REFETCH_INTERVAL` seconds so random
kids cannot make the node hammer the identity provider; that is how a key
rotation is picked up before the next scheduled refresh.

A failed fetch keeps the last good key set. Fetch failures are logged once per
change of state (working -> failing -> working), not on every retry.

Only asymmetric signing keys are kept (RSA, EC P-256/P-384, Ed25519/Ed448): a
symmetric ("oct") key has no business in a published key set, and accepting it
would let anyone who can read the URL sign tokens.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import trio
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey, Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt import PyJWKSet

from dataplane.policies.auth.common import FetchError, check_http_url, connection_pool, http_request

if TYPE_CHECKING:
    from dataplane.policies.base import TaskSpawner

log = logging.getLogger("flux.policy.jwks")

MIN_REFETCH_INTERVAL = 10.0  # seconds between refetches caused by unknown kids (read at call time)
FAILURE_RETRY = 10.0  # seconds before the background task retries a failed fetch
FETCH_TIMEOUT = 5.0  # seconds for one fetch (connect, send, receive)
MAX_DOCUMENT = 1 << 20  # bytes of a JWKS document
MAX_KEYS = 64  # keys kept from one document

_PUBLIC = (RSAPublicKey, EllipticCurvePublicKey, Ed25519PublicKey, Ed448PublicKey)
_PRIVATE = (RSAPrivateKey, EllipticCurvePrivateKey, Ed25519PrivateKey, Ed448PrivateKey)


class JwkKey(NamedTuple):
    """One usable verification key of a set."""

    kid: str | None
    alg: str | None  # the JWK's own "alg" (tokens must then use exactly it)
    default_alg: str  # what to allow when the policy lists no algorithms ("alg", else by key type)
    key: Any  # a cryptography public key


class JwksCache:
    """The key set published at `url`; see the module docstring."""

    def __init__(
        self, url: str, refresh: float, nursery: TaskSpawner | None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.url = check_http_url(url, "jwks_url")
        self.clock = clock  # monotonic seconds: refetch rate limit, refresh schedule, last_success
        self.refresh_interval = max(1.0, refresh)
        self._nursery = nursery
        self.by_kid: dict[str, JwkKey] = {}
        self.keys: tuple[JwkKey, ...] = ()
        self.loaded = False  # a key set was fetched at least once
        self.fetches = 0  # fetch attempts
        self.failures = 0
        self.last_error: str | None = None
        self.last_success = 0.0  # monotonic time of the last good fetch
        self._last_attempt = -math.inf
        self._inflight: trio.Event | None = None
        self._ok: bool | None = None  # state for logging: None (unknown), True, False
        self._closed = False
        self._scope = trio.CancelScope()
        if nursery is not None:
            self._begin()
            nursery.start_soon(self._run)

    # -- reactor side (sync, cheap) --------------------------------------------------------------

    def get(self, kid: str) -> JwkKey | None:
        return self.by_kid.get(kid)

    def may_refetch(self) -> bool:
        """Whether awaiting `refresh` could bring new keys now (a fetch runs or is allowed)."""
        if self._closed:
            return False
        return self._inflight is not None or self.clock() - self._last_attempt >= MIN_REFETCH_INTERVAL

    def want_refresh(self, seconds: float) -> None:
        """A policy asks for refreshes at least every `seconds` (the shortest asked wins)."""
        self.refresh_interval = max(1.0, min(self.refresh_interval, seconds))

    # -- trio side -------------------------------------------------------------------------------

    async def refresh(self, kid: str | None = None, max_wait: float = 3.0) -> None:
        """Wait (at most `max_wait` seconds) for a key set that may hold `kid`: the fetch in flight, or a
        new one when the last attempt is older than MIN_REFETCH_INTERVAL. Never raises."""
        with trio.move_on_after(max_wait):
            if kid is not None and kid in self.by_kid:
                return
            ev = self._inflight
            if ev is None:
                if self._closed or self.clock() - self._last_attempt < MIN_REFETCH_INTERVAL:
                    return
                ev = self._begin()
                if self._nursery is None:  # no background nursery: fetch in the caller's task
                    await self._fetch_and_signal(ev)
                    return
            await ev.wait()

    def close(self) -> None:
        """Stop refreshing (the snapshot no longer uses this URL)."""
        self._closed = True
        self._scope.cancel()

    def _begin(self) -> trio.Event:
        ev = self._inflight = trio.Event()
        self._last_attempt = self.clock()
        if self._nursery is not None:
            self._nursery.start_soon(self._fetch_and_signal, ev)
        return ev

    async def _run(self) -> None:
        with self._scope:
            while True:
                try:
                    ev = self._inflight if self._inflight is not None else self._begin()
                    await ev.wait()
                    delay = self.refresh_interval if self._ok else min(self.refresh_interval, FAILURE_RETRY)
                except Exception:  # never let a bug take the services nursery down
                    log.exception("JWKS %s: refresh loop error", self.url)
                    delay = FAILURE_RETRY
                # sleep from the last attempt: an early (unknown kid) fetch also counts as a refresh
                await trio.sleep(max(0.5, delay - (self.clock() - self._last_attempt)))

    async def _fetch_and_signal(self, ev: trio.Event) -> None:
        try:
            await self._fetch()
        except Exception as exc:  # never let a bug take the services nursery down
            self._failed(f"unexpected error: {exc!r}")
        finally:
            if self._inflight is ev:
                self._inflight = None
            ev.set()

    async def _fetch(self) -> None:
        self.fetches += 1
        try:
            async with connection_pool(self.url, max_connections=1) as pool:
                status, body = await http_request(
                    pool,
                    "GET",
                    self.url,
                    headers=[(b"Accept", b"application/json, application/jwk-set+json")],
                    time_limit=FETCH_TIMEOUT,
                    max_body=MAX_DOCUMENT,
                )
            if status != 200:
                raise FetchError(f"HTTP {status}")
            keys = parse_jwks(body)
        except (FetchError, ValueError) as exc:
            self._failed(str(exc))
            return
        self.by_kid = {k.kid: k for k in keys if k.kid is not None}
        self.keys = keys
        self.loaded = True
        self.last_success = self.clock()
        self.last_error = None
        if self._ok is False:
            log.warning("JWKS %s: fetched again (%d keys)", self.url, len(keys))
        elif self._ok is None:
            log.info("JWKS %s: %d keys", self.url, len(keys))
        self._ok = True

    def _failed(self, message: str) -> None:
        self.failures += 1
        self.last_error = message
        if self._ok is not False:
            kept = f"keeping the {len(self.keys)} keys fetched before" if self.loaded else "no keys yet"
            log.warning("JWKS %s: fetch failed (%s); %s", self.url, message, kept)
        self._ok = False


def parse_jwks(body: bytes) -> tuple[JwkKey, ...]:
    """The usable verification keys of a JWKS document; ValueError when there are none."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWK set (no "keys" list)')
    entries = [k for k in doc["keys"] if isinstance(k, dict) and _wanted(k)][:MAX_KEYS]
    if not entries:
        raise ValueError("no usable signing keys")
    try:
        keyset = PyJWKSet(entries)
    except Exception as exc:  # PyJWKSetError and friends: no usable key
        raise ValueError(f"no usable signing keys ({exc})") from None
    out = []
    for jwk in keyset:
        key = jwk.key
        if isinstance(key, _PRIVATE):
            key = key.public_key()
        if not isinstance(key, _PUBLIC):
            continue
        kid = jwk.key_id if isinstance(jwk.key_id, str) else None
        alg = jwk._jwk_data.get("alg")
        out.append(JwkKey(kid, alg if isinstance(alg, str) else None, jwk.algorithm_name, key))
    if not out:
        raise ValueError("no usable signing keys")
    return tuple(out)


def _wanted(jwk: dict[str, Any]) -> bool:
    if jwk.get("kty") not in ("RSA", "EC", "OKP"):
        return False  # "oct" (shared secrets) and unknown types
    use = jwk.get("use")
    return use is None or use == "sig"
