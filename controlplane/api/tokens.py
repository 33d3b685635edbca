"""POST /api/v1/auth/token: issue a JWT for a consumer, signed with its jwt credential;
POST /api/v1/auth/token/verify: whether the nodes would take a token, and as which consumer.

HS* credentials sign with their secret; RS/ES/EdDSA credentials need the
optional `private_key` stored with them. The token carries `iss` (the
credential's issuer), `sub` (the consumer), `iat`, `exp`, optional `aud`,
and any extra claims asked for; nodes verify it with the same credential.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
from fastapi import APIRouter, Depends
from pydantic import ConfigDict, Field

from controlplane.api.state import ControlPlane, get_cp, require_admin
from controlplane.jwt_verify import PolicyNotUsable, jwt_policy, verify
from controlplane.spec._types import Duration, Name
from controlplane.spec.consumer import ConsumerSpec, JwtCredential
from controlplane.store.config_store import NotFound
from controlplane.validation import ConfigError, FieldError
from fluxcommon.textfields import TextChecked

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])

_RESERVED = {"iss", "sub", "iat", "exp", "nbf"}


class TokenRequest(TextChecked):
    model_config = ConfigDict(extra="forbid")
    consumer: Name
    issuer: str | None = Field(default=None, description="which of the consumer's jwt credentials (default: the first)")
    ttl: Duration = Field(default=3_600_000, description="lifetime, e.g. '15m' (default 1h, at most 7 days)")
    audience: str | list[str] | None = None
    claims: dict[str, Any] = {}


@router.post("/token", summary="Issue a JWT for a consumer (signed with its jwt credential)")
def issue_token(
    body: TokenRequest, cp: ControlPlane = Depends(get_cp), author: str = Depends(require_admin)
) -> dict[str, Any]:
    _, cfg = cp.store.current()
    consumer = cfg.get("consumers", body.consumer)
    if not isinstance(consumer, ConsumerSpec):
        raise NotFound(f"consumer {body.consumer!r} not found")
    creds = [c for c in consumer.credentials if isinstance(c, JwtCredential)]
    if body.issuer is not None:
        creds = [c for c in creds if c.issuer == body.issuer]
    where = f"consumers/{body.consumer}"
    if not creds:
        which = f" with issuer {body.issuer!r}" if body.issuer else ""
        raise ConfigError([FieldError(where, "issuer", f"the consumer has no jwt credential{which}")])
    cred = creds[0]
    key = cred.secret if cred.algorithm.startswith("HS") else cred.private_key
    if not key:
        raise ConfigError(
            [FieldError(where, "credentials", f"{cred.algorithm} tokens need the credential's private_key to sign")]
        )
    if not 1000 <= body.ttl <= 7 * 86_400_000:
        raise ConfigError([FieldError("", "ttl", "between 1s and 7d")])
    clash = _RESERVED & set(body.claims)
    if clash:
        raise ConfigError([FieldError("", "claims", f"set by the server: {', '.join(sorted(clash))}")])
    now = int(time.time())
    claims: dict[str, Any] = {**body.claims, "iss": cred.issuer, "sub": consumer.name, "iat": now}
    claims["exp"] = now + body.ttl // 1000
    if body.audience is not None:
        claims["aud"] = body.audience
    token = jwt.encode(claims, key, algorithm=cred.algorithm)
    cp.count("tokens_issued")
    return {
        "token": token,
        "token_type": "Bearer",
        "expires_in": body.ttl // 1000,
        "expires_at": claims["exp"],
        "issuer": cred.issuer,
        "algorithm": cred.algorithm,
        "consumer": consumer.name,
    }


class VerifyRequest(TextChecked):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=16_384, description="the JWT (a leading 'Bearer ' is dropped)")
    policy: Name | None = Field(
        default=None, description="a jwt policy whose issuer, audience, leeway, algorithms and require apply"
    )
    audience: str | list[str] | None = Field(default=None, description="the audience to check (else the policy's)")


@router.post("/token/verify", summary="Verify a JWT: the consumer and claims, or why it would be refused")
def verify_token(body: VerifyRequest, cp: ControlPlane = Depends(get_cp)) -> dict[str, Any]:
    """Answers 200 with `{"valid": true, "consumer", "groups", "issuer", "algorithm", "claims",
    "expires_at"}` or `{"valid": false, "reason"}`; the read role may ask (it commits nothing)."""
    _, cfg = cp.store.current()
    try:
        policy = jwt_policy(cfg, body.policy) if body.policy else None
    except PolicyNotUsable as exc:
        raise ConfigError([FieldError("", "policy", str(exc))]) from None
    cp.count("tokens_verified")
    return verify(body.token, cfg, policy=policy, audience=body.audience).as_dict()
