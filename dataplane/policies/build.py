"""Building a snapshot's policies: policy type -> class, config parsed and validated.

The one place where policy implementations (and the I/O clients some of them own: Redis,
JWKS and token-introspection fetchers) are plugged into the node. The config compiler calls
`build_policies` and nothing else of theirs; the chain that runs them is
`dataplane.policies.chain`, which imports none of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from google.protobuf.json_format import MessageToDict

from dataplane.policies.base import Policy, PolicyEnv
from flux.v1 import config_pb2 as pb
from fluxcommon.policy_config import PolicyConfigError, parse_policy_config

PolicyFactory = Callable[[str, Any, PolicyEnv], Policy]


def _factories() -> dict[str, PolicyFactory]:
    """Policy classes by type (imported here so a missing optional module names itself)."""
    from dataplane.policies.access import ApiAclPolicy, DomainAclPolicy, IpAclPolicy, UaFilterPolicy
    from dataplane.policies.auth import ApiKeyPolicy, BasicAuthPolicy, JwtPolicy, OAuth2Policy
    from dataplane.policies.breaker import CircuitBreakerPolicy
    from dataplane.policies.cors import CorsPolicy
    from dataplane.policies.ratelimit import RateLimitPolicy
    from dataplane.policies.rewrite import RedirectPolicy, RequestRewritePolicy, ResponseRewritePolicy

    classes: Iterable[type[Policy]] = (
        JwtPolicy, OAuth2Policy, ApiKeyPolicy, BasicAuthPolicy, IpAclPolicy, UaFilterPolicy, DomainAclPolicy,
        ApiAclPolicy, CorsPolicy, RateLimitPolicy, CircuitBreakerPolicy, RequestRewritePolicy,
        ResponseRewritePolicy, RedirectPolicy,
    )  # fmt: skip
    from dataplane.tunnel.http_auth import TunnelHttpAuthPolicy
    from dataplane.tunnel.http_route import TunnelHttpRoutePolicy

    factories = {cls.type: cls for cls in classes}
    factories[TunnelHttpAuthPolicy.type] = TunnelHttpAuthPolicy  # made by the node for http tunnels only
    factories[TunnelHttpRoutePolicy.type] = TunnelHttpRoutePolicy  # likewise (routeByHTTPUser)
    return factories  # type: ignore[return-value]


def _internal_schemas() -> dict[str, Any]:
    from dataplane.tunnel import http_auth, http_route

    return {http_auth.TYPE: http_auth.TunnelHttpAuthConfig, http_route.TYPE: http_route.TunnelHttpRouteConfig}


_INTERNAL_SCHEMAS = _internal_schemas()


class PolicyBuildError(ValueError):
    """A policy whose config the node refuses (the snapshot is NACKed with this message)."""


def config_dict(policy: pb.Policy) -> dict[str, Any]:
    return MessageToDict(policy.config) if policy.HasField("config") else {}


def _ints(value: Any) -> Any:
    """Struct numbers arrive as floats; give integral ones back as ints (rate: 100.0 -> 100)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def build_policies(policies: Iterable[pb.Policy], env: PolicyEnv) -> dict[str, Policy]:
    """Every policy of a snapshot, built once; raises PolicyBuildError naming the policy at fault."""
    built: dict[str, Policy] = {}
    policies = list(policies)
    if not policies:
        return built
    factories = _factories()
    for spec in policies:
        factory = factories.get(spec.type)
        if factory is None:
            raise PolicyBuildError(f"policy {spec.name!r}: unknown type {spec.type!r}")
        raw = _ints(config_dict(spec))
        try:
            internal = _INTERNAL_SCHEMAS.get(spec.type)
            config = internal.model_validate(raw) if internal else parse_policy_config(spec.type, raw)
            policy = factory(spec.name, config, env)
        except PolicyConfigError as exc:
            raise PolicyBuildError(f"policy {spec.name!r}: {exc}") from None
        except (ValueError, TypeError) as exc:  # pydantic's ValidationError too
            raise PolicyBuildError(f"policy {spec.name!r}: {exc}") from None
        policy.config_key = json.dumps(raw, sort_keys=True)  # type: ignore[attr-defined]
        built[spec.name] = policy
    return built
