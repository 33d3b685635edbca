"""Verify a JWT as the nodes' `jwt` policy would, against the consumers' jwt credentials.

`verify(token, cfg, policy=..., audience=...)` answers `Verdict(valid, consumer, claims, ...)`
or, for a token that would be refused, `valid=False` and the reason. The key is that of the
consumer credential whose `issuer` is the token's `iss` (as on the nodes); `alg: none`, an
algorithm the credential (or the policy's `algorithms`) does not allow, and algorithm
confusion are refused before any signature check. With a `jwt` policy named, its `issuer`,
`audience`, `leeway`, `algorithms` and `require` apply; without one, `require` is `[exp]`,
as the policy's default. Tokens of a policy's `jwks_url` are verified by the nodes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jwt

from controlplane.spec import ConfigSet, ConsumerSpec, PolicySpec
from controlplane.spec.consumer import JwtCredential
from fluxcommon.policy_config import JwtConfig, PolicyConfigError, parse_policy_config


@dataclass
class Verdict:
    valid: bool
    reason: str = ""
    consumer: str = ""
    groups: list[str] = field(default_factory=list)
    issuer: str = ""
    algorithm: str = ""
    claims: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        if not self.valid:
            return {"valid": False, "reason": self.reason, **({"issuer": self.issuer} if self.issuer else {})}
        return {
            "valid": True,
            "consumer": self.consumer,
            "groups": self.groups,
            "issuer": self.issuer,
            "algorithm": self.algorithm,
            "claims": self.claims,
            "expires_at": self.claims.get("exp"),
        }


class PolicyNotUsable(ValueError):
    """The named policy is missing or no jwt policy (the caller's mistake: a 4xx)."""


def jwt_policy(cfg: ConfigSet, name: str) -> JwtConfig:
    spec = cfg.get("policies", name)
    if not isinstance(spec, PolicySpec):
        raise PolicyNotUsable(f"unknown policy {name!r}")
    if spec.type != "jwt":
        raise PolicyNotUsable(f"policy {name!r} is a {spec.type} policy, not jwt")
    try:
        return parse_policy_config("jwt", spec.config)  # type: ignore[return-value]
    except PolicyConfigError as exc:  # pragma: no cover - stored policies were checked at write time
        raise PolicyNotUsable(str(exc)) from None


def _credential(cfg: ConfigSet, issuer: str) -> tuple[ConsumerSpec, JwtCredential] | None:
    for consumer in cfg["consumers"].values():
        if isinstance(consumer, ConsumerSpec):
            for cred in consumer.credentials:
                if isinstance(cred, JwtCredential) and cred.issuer == issuer:
                    return consumer, cred
    return None


def _refused(reason: str, issuer: str = "") -> Verdict:
    return Verdict(False, reason, issuer=issuer)


def verify(
    token: str, cfg: ConfigSet, *, policy: JwtConfig | None = None, audience: str | list[str] | None = None
) -> Verdict:
    """Whether the nodes would take `token`, and as whom (see the module docstring)."""
    token = token.strip().removeprefix("Bearer ").strip()
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        return _refused(f"not a JWT: {exc}")
    alg = str(header.get("alg", ""))
    issuer = str(unverified.get("iss", ""))
    if not alg or alg.lower() == "none":
        return _refused("alg none (an unsigned token) is refused", issuer)
    if not issuer:
        return _refused("the token has no iss claim, so no consumer credential can verify it")
    found = _credential(cfg, issuer)
    if found is None:
        jwks = " (tokens of the policy's jwks_url are verified by the nodes only)" if policy and policy.jwks_url else ""
        return _refused(f"no consumer has a jwt credential of issuer {issuer!r}{jwks}", issuer)
    consumer, cred = found
    allowed = list(policy.algorithms) if policy and policy.algorithms else [cred.algorithm]
    if alg not in allowed:
        return _refused(f"algorithm {alg} is not allowed here ({', '.join(allowed)})", issuer)
    if alg.startswith("HS") != cred.algorithm.startswith("HS"):
        return _refused(f"algorithm {alg} does not fit the credential's key ({cred.algorithm}): refused", issuer)
    key = cred.secret if cred.algorithm.startswith("HS") else cred.public_key
    wanted_aud = audience if audience is not None else (policy.audience if policy else None)
    leeway = (policy.leeway if policy else 0) / 1000
    require = list(policy.require) if policy else ["exp"]
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=wanted_aud,
            issuer=policy.issuer if policy and policy.issuer else None,
            leeway=leeway,
            options={"require": require, "verify_aud": wanted_aud is not None},
        )
    except jwt.ExpiredSignatureError:
        return _refused(f"expired (exp {unverified.get('exp')})", issuer)
    except jwt.ImmatureSignatureError:
        return _refused(f"not valid yet (nbf {unverified.get('nbf')})", issuer)
    except jwt.InvalidSignatureError:
        return _refused(f"the signature does not verify with consumer {consumer.name!r}'s credential", issuer)
    except jwt.MissingRequiredClaimError as exc:
        return _refused(f"missing claim {exc.claim!r} (required: {', '.join(require)})", issuer)
    except jwt.InvalidAudienceError:
        return _refused(f"audience {unverified.get('aud')!r} is not {wanted_aud!r}", issuer)
    except jwt.InvalidIssuerError:
        return _refused(f"issuer {issuer!r} is not the policy's {policy.issuer if policy else ''!r}", issuer)
    except jwt.PyJWTError as exc:
        return _refused(f"refused: {exc}", issuer)
    return Verdict(True, consumer=consumer.name, groups=list(consumer.groups), issuer=issuer, algorithm=alg,
                   claims=claims)  # fmt: skip
