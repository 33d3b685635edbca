"""jwt: bearer tokens signed with a consumer's key or a key from a JWKS URL.

Which key verifies a token:
- its `iss` names a consumer's jwt credential (env.consumers.by_issuer): that credential's
  secret (HS256/384/512) or PEM public key (RS256/384/512, ES256/384, EdDSA); the token
  belongs to that consumer;
- otherwise, with `jwks_url` set: the key of the published set with the token's `kid`
  (a token without kid is tried against every key); the consumer is the one named by
  the `consumer_claim` claim (a known consumer, else an anonymous one of that name).

Allowed algorithms: `algorithms` from the config, else the credential's algorithm (JWKS:
the key's `alg`, else the algorithm its type implies, RS256 for RSA). `alg: none`, any
algorithm not allowed, and algorithm confusion (an HMAC alg with a public key, an
asymmetric alg with a secret, an RSA alg with an EC key...) are refused before any
signature check: an HMAC verify only ever sees a secret, never a PEM public key.

Claims: every claim named in `require` must be present (default `[exp]`: a token that never
expires is refused; `require: []` accepts one); exp and nbf (when present, with `leeway`), iss
(when `issuer` is configured), aud (when `audience` is configured; any one listed audience
matches).

Verified tokens are cached by SHA-256 (bounded LRU) until min(exp, CACHE_SECONDS), so a
repeated token skips parsing and the signature check; never past its exp.

The token is looked up without network I/O; only an unknown kid (or a key set not
fetched yet) makes `on_request` return a coroutine that waits (briefly, rate-limited)
for the JWKS to be fetched again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, SECP384R1, EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import get_default_algorithms
from jwt.utils import is_pem_format, is_ssh_key

from dataplane.policies.auth.common import (
    MAX_CREDENTIAL_LENGTH,
    MAX_NAME_LENGTH,
    AuthPolicy,
    TokenSource,
    TtlCache,
    anonymous_consumer,
    check_http_url,
    unauthorized,
    unavailable,
)
from dataplane.policies.auth.jwks import JwkKey, JwksCache
from dataplane.policies.base import Consumer, LocalResponse, PolicyEnv, PolicyResult, RequestContext
from flux.v1 import config_pb2 as pb
from fluxcommon.policy_config import JwtConfig

SUPPORTED = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA")
HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})
_ALGS = {name: alg for name, alg in get_default_algorithms().items() if name in SUPPORTED}
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

CACHE_SIZE = 10_000  # verified tokens kept per policy
CACHE_SECONDS = 60.0  # longest a verified token is trusted without checking it again
UNKNOWN_KID_WAIT = 3.0  # longest a request waits for a JWKS refetch

_MESSAGES = {
    "expired": "token expired",
    "not_yet_valid": "token not yet valid",
    "missing_claim": "token lacks a required claim",
}


class ParsedToken(NamedTuple):
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    alg: str
    kid: str | None


class _Accepted(NamedTuple):
    consumer: Consumer
    claims: dict[str, Any]
    forward: str | None  # the forward_header value


def _b64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def parse_token(token: str) -> ParsedToken | None:
    """Header, claims and signature of a compact JWS, unverified; None when malformed."""
    if len(token) > MAX_CREDENTIAL_LENGTH or not _SHAPE.fullmatch(token):
        return None
    head, payload, sig = token.split(".")
    try:
        header = json.loads(_b64(head))
        claims = json.loads(_b64(payload))
        signature = _b64(sig)
    except (ValueError, RecursionError):  # base64, UTF-8 and JSON errors are ValueErrors
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    alg = header.get("alg")
    kid = header.get("kid")
    if not isinstance(alg, str) or (kid is not None and not isinstance(kid, str)):
        return None
    if "crit" in header:
        return None  # no JWS extension is understood here (RFC 7515 §4.1.11: refuse)
    return ParsedToken(header, claims, f"{head}.{payload}".encode("ascii"), signature, alg, kid)


def key_fits(alg: str, key: Any) -> bool:
    """Whether `key` is the kind of key `alg` verifies with (the algorithm-confusion guard)."""
    if alg in HMAC_ALGS:
        return isinstance(key, bytes)
    if alg in ("RS256", "RS384", "RS512"):
        return isinstance(key, RSAPublicKey)
    if alg == "ES256":
        return isinstance(key, EllipticCurvePublicKey) and isinstance(key.curve, SECP256R1)
    if alg == "ES384":
        return isinstance(key, EllipticCurvePublicKey) and isinstance(key.curve, SECP384R1)
    if alg == "EdDSA":
        return isinstance(key, Ed25519PublicKey | Ed448PublicKey)
    return False


def _implied_alg(key: Any) -> str:
    if isinstance(key, RSAPublicKey):
        return "RS256"
    if isinstance(key, EllipticCurvePublicKey):
        return "ES384" if isinstance(key.curve, SECP384R1) else "ES256"
    return "EdDSA"


def credential_key(cred: pb.Credential) -> tuple[str, Any] | None:
    """(algorithm, prepared key) of a jwt credential, or None when it cannot verify anything."""
    alg = cred.algorithm or ("HS256" if cred.secret else "")
    if alg in HMAC_ALGS or (not alg and cred.secret):
        secret = cred.secret.encode("utf-8")
        if not secret or is_pem_format(secret) or is_ssh_key(secret):
            return None  # a public key pasted as a secret would let anyone sign
        return alg, secret
    if not cred.public_key or (alg and alg not in SUPPORTED):
        return None
    try:
        key = load_pem_public_key(cred.public_key.encode("utf-8"))
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None
    alg = alg or _implied_alg(key)
    return (alg, key) if key_fits(alg, key) else None


def _verify(parsed: ParsedToken, key: Any) -> bool:
    try:
        return bool(_ALGS[parsed.alg].verify(parsed.signing_input, key, parsed.signature))
    except Exception:  # a malformed signature for the key type
        return False


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class JwtPolicy(AuthPolicy):
    """See the module docstring. Sets `ctx.consumer`, `X-Consumer-Name`/`-Groups` upstream,
    `ctx.vars["jwt_claims"]`, and the forward_header (base64url JSON claims) when configured."""

    type = "jwt"

    def __init__(self, name: str, config: JwtConfig, env: PolicyEnv, *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, config.consumer_header)
        self.config = config
        self._env = env
        self._consumers = env.consumers  # this snapshot's consumers (env.consumers moves on with the next)
        self._clock = clock  # wall clock: exp and nbf are Unix times
        self._source = TokenSource(config.from_)
        self._algorithms = tuple(config.algorithms)
        self._leeway = config.leeway / 1000.0
        self._issuer = config.issuer
        aud = config.audience
        self._audience = frozenset([aud] if isinstance(aud, str) else aud) if aud else None
        self._claim = config.consumer_claim
        self._require = tuple(config.require)
        self._forward = config.forward_header
        self._cache: TtlCache[bytes, _Accepted] = TtlCache(CACHE_SIZE, clock)
        self._issuer_keys: dict[str, list[tuple[Consumer, str, Any]]] = {}
        self.jwks: JwksCache | None = None
        if config.jwks_url:
            url = check_http_url(config.jwks_url, "jwks_url")
            refresh = config.jwks_refresh / 1000.0
            services = env.services
            self.jwks = services.get(("jwks", url), lambda: JwksCache(url, refresh, services.nursery, env.clock))
            self.jwks.want_refresh(refresh)

    # -- per request -------------------------------------------------------------------------

    def on_request(self, ctx: RequestContext) -> PolicyResult:
        token = self._source.extract(ctx)
        if token is None:
            return self._deny("missing", unauthorized("Bearer", "missing bearer token"))
        now = self._clock()
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        hit = self._cache.get(digest, now)
        if hit is not None:
            self._accept(ctx, hit)
            return None
        parsed = parse_token(token)
        if parsed is None:
            return self._invalid("malformed")
        if parsed.alg not in _ALGS or (self._algorithms and parsed.alg not in self._algorithms):
            return self._invalid("bad_algorithm")  # "none" is never in _ALGS
        iss = parsed.claims.get("iss")
        entries = self._issuer_entries(iss) if isinstance(iss, str) else None
        if entries is not None:
            return self._verify_with_credentials(ctx, parsed, entries, digest, now)
        jwks = self.jwks
        if jwks is None:
            return self._invalid("unknown_issuer")
        if self._issuer is not None and iss != self._issuer:
            return self._invalid("bad_issuer")  # not worth a key lookup, let alone a JWKS refetch
        keys = self._jwks_keys(jwks, parsed)
        if keys is None:
            if self._env.reactor is not None and jwks.may_refetch():
                return self._after_refresh(ctx, parsed, digest)
            return self._no_key(jwks)
        return self._verify_with_jwks(ctx, parsed, keys, digest, now)

    async def _after_refresh(self, ctx: RequestContext, parsed: ParsedToken, digest: bytes) -> LocalResponse | None:
        """Wait for the JWKS to be fetched again (unknown kid), then verify with what it holds."""
        jwks = self.jwks
        reactor = self._env.reactor
        assert jwks is not None and reactor is not None
        try:
            await reactor.to_trio(jwks.refresh, parsed.kid, UNKNOWN_KID_WAIT)
        except Exception:
            pass  # refresh() does not raise; a failure leaves the old keys
        keys = self._jwks_keys(jwks, parsed)
        if keys is None:
            return self._no_key(jwks)
        return self._verify_with_jwks(ctx, parsed, keys, digest, self._clock())

    # -- keys --------------------------------------------------------------------------------

    def _issuer_entries(self, iss: str) -> list[tuple[Consumer, str, Any]] | None:
        entries = self._issuer_keys.get(iss)
        if entries is None:
            creds = self._consumers.by_issuer.get(iss)
            if not creds:
                return None  # not remembered: random issuers must not grow the dict
            entries = []
            for consumer, cred in creds:
                prepared = credential_key(cred)
                if prepared is not None:
                    entries.append((consumer, prepared[0], prepared[1]))
            self._issuer_keys[iss] = entries
        return entries

    @staticmethod
    def _jwks_keys(jwks: JwksCache, parsed: ParsedToken) -> tuple[JwkKey, ...] | None:
        if parsed.kid is not None:
            key = jwks.get(parsed.kid)
            return (key,) if key is not None else None
        return jwks.keys or None

    def _no_key(self, jwks: JwksCache) -> LocalResponse:
        if not jwks.loaded:
            resp = unavailable("the token signing keys are not available, try again later")
            return self._deny("jwks_unavailable", resp)
        return self._invalid("unknown_key")

    # -- verification ------------------------------------------------------------------------

    def _verify_with_credentials(
        self,
        ctx: RequestContext,
        parsed: ParsedToken,
        entries: list[tuple[Consumer, str, Any]],
        digest: bytes,
        now: float,
    ) -> LocalResponse | None:
        alg = parsed.alg
        usable = False
        for consumer, cred_alg, key in entries:
            if alg not in (self._algorithms or (cred_alg,)) or not key_fits(alg, key):
                continue
            usable = True
            if _verify(parsed, key):
                return self._check(ctx, parsed, consumer, digest, now)
        return self._invalid("bad_signature" if usable else "bad_algorithm")

    def _verify_with_jwks(
        self, ctx: RequestContext, parsed: ParsedToken, keys: tuple[JwkKey, ...], digest: bytes, now: float
    ) -> LocalResponse | None:
        alg = parsed.alg
        usable = False
        for k in keys:
            if k.alg is not None and k.alg != alg:
                continue  # a key published for one algorithm is used with that one only
            if alg not in (self._algorithms or (k.default_alg,)) or not key_fits(alg, k.key):
                continue
            usable = True
            if _verify(parsed, k.key):
                return self._check(ctx, parsed, None, digest, now)
        return self._invalid("bad_signature" if usable else "bad_algorithm")

    def _claims_problem(self, claims: dict[str, Any], now: float) -> str | None:
        for claim in self._require:
            if claims.get(claim) is None:
                return "missing_claim"
        exp = claims.get("exp")
        if exp is not None:
            if not _number(exp):
                return "malformed"
            if now >= exp + self._leeway:
                return "expired"
        nbf = claims.get("nbf")
        if nbf is not None:
            if not _number(nbf):
                return "malformed"
            if nbf > now + self._leeway:
                return "not_yet_valid"
        if self._issuer is not None and claims.get("iss") != self._issuer:
            return "bad_issuer"
        if self._audience is not None:
            aud = claims.get("aud")
            if isinstance(aud, str):
                ok = aud in self._audience
            elif isinstance(aud, list):
                ok = any(isinstance(a, str) and a in self._audience for a in aud)
            else:
                ok = False
            if not ok:
                return "bad_audience"
        return None

    def _check(
        self, ctx: RequestContext, parsed: ParsedToken, consumer: Consumer | None, digest: bytes, now: float
    ) -> LocalResponse | None:
        """Signature verified: check the claims, find the consumer, cache and accept."""
        claims = parsed.claims
        problem = self._claims_problem(claims, now)
        if problem is not None:
            return self._invalid(problem)
        if consumer is None:
            name = claims.get(self._claim)
            if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
                return self._invalid("no_consumer")
            consumer = self._consumers.consumers.get(name) or anonymous_consumer(name)
        forward = None
        if self._forward:
            raw = json.dumps(claims, separators=(",", ":"), ensure_ascii=True).encode("ascii")
            forward = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        accepted = _Accepted(consumer, claims, forward)
        exp = claims.get("exp")
        expires = now + CACHE_SECONDS if exp is None else min(float(exp), now + CACHE_SECONDS)
        if expires > now:  # a token accepted only thanks to the leeway is not cached
            self._cache.put(digest, accepted, expires)
        self._accept(ctx, accepted)
        return None

    def _accept(self, ctx: RequestContext, accepted: _Accepted) -> None:
        self._allow(ctx, accepted.consumer)
        ctx.vars["jwt_claims"] = accepted.claims
        if accepted.forward is not None and self._forward:
            ctx.set_upstream_header(self._forward, accepted.forward)

    def _invalid(self, reason: str) -> LocalResponse:
        message = _MESSAGES.get(reason, "invalid token")
        return self._deny(reason, unauthorized("Bearer", message, "invalid_token"))
