"""Config schemas of every policy type, shared by control plane (write-time
validation) and node (snapshot compilation).

`parse_policy_config(type, config)` returns the typed config or raises
`PolicyConfigError` naming the field at fault. Every schema follows the text rule of
`fluxcommon.textfields` (no control characters in any string; the circuit breaker's
fallback body may span lines), the fields that reach the wire are checked with
`fluxcommon.wire`, and every number has an upper bound (configs travel as JSON numbers,
exact up to 2**53).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from fluxcommon.didyoumean import unknown_field
from fluxcommon.durations import MAX_DURATION_MS, parse_duration_ms
from fluxcommon.textfields import TextChecked
from fluxcommon.wire import (
    checked_headers,
    header_name_problem,
    header_value_problem,
    host_problem,
    location_problem,
    path_problem,
    regex_replacement_problem,
    require,
    token_problem,
    url_problem,
)

__all__ = [
    "SCHEMAS",
    "PolicyConfigError",
    "checked_headers",
    "config_problems",
    "header_name_problem",
    "header_value_problem",
    "host_problem",
    "parse_policy_config",
    "validate_policy_config",
]


class PolicyConfigError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config.{field}: {message}" if field else f"config: {message}")
        self.field = f"config.{field}" if field else "config"
        self.message = message


Ms = Annotated[int, BeforeValidator(parse_duration_ms), Field(le=MAX_DURATION_MS)]
MAX_COUNT = 1_000_000_000
"""Upper bound of rates, bursts and counts in policy configs."""


class _Config(TextChecked):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"{value!r} is not an IPv4/IPv6 address or CIDR") from None


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"bad regex {value!r}: {exc}") from None
    return value


def _http_url(value: str) -> str:
    require(url_problem(value))
    return value


def _header_name(value: str) -> str:
    require(header_name_problem(value))
    return value


def _token(value: str) -> str:
    require(token_problem(value))
    return value


Cidr = Annotated[str, BeforeValidator(lambda v: _cidr(v) if isinstance(v, str) else v)]
HttpUrl = Annotated[str, BeforeValidator(lambda v: _http_url(v) if isinstance(v, str) else v)]
Regex = Annotated[str, BeforeValidator(lambda v: _regex(v) if isinstance(v, str) else v)]
HeaderName = Annotated[str, BeforeValidator(lambda v: _header_name(v) if isinstance(v, str) else v)]
Token = Annotated[str, BeforeValidator(lambda v: _token(v) if isinstance(v, str) else v)]
TokenSource = Annotated[
    str, Field(pattern=r"^(header:[A-Za-z0-9-]+|query:[A-Za-z0-9_.-]+|cookie:[!#$%&'*+\-.^_`|~0-9A-Za-z]+)$")
]


class _AuthConfig(_Config):
    consumer_header: str = Field(default="X-Consumer-Name", pattern=r"^[A-Za-z0-9-]+$")


class JwtConfig(_AuthConfig):
    issuer: str | None = None
    audience: str | list[str] | None = None
    algorithms: list[Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"]] = []
    jwks_url: HttpUrl | None = None
    jwks_refresh: Ms = 300_000
    leeway: Ms = 0
    from_: TokenSource = Field(default="header:Authorization", alias="from")
    consumer_claim: str = "sub"
    forward_header: HeaderName | None = None
    require: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default=["exp"], description="claims a token must carry (default: exp; [] accepts tokens that never expire)"
    )


class OAuth2Config(_AuthConfig):
    introspection_url: HttpUrl
    client_id: str
    client_secret: str
    required_scopes: list[str] = []
    cache_ttl: Ms = 60_000
    from_: TokenSource = Field(default="header:Authorization", alias="from")
    timeout: Ms = 2000


class ApiKeyConfig(_AuthConfig):
    header: HeaderName = "apikey"
    query: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.~-]+$")
    hide_credentials: bool = True


class BasicAuthConfig(_AuthConfig):
    realm: str = "flux"
    hide_credentials: bool = True

    @field_validator("realm")
    @classmethod
    def _realm(cls, v: str) -> str:
        require(header_value_problem("realm", v))  # sent quoted in WWW-Authenticate
        return v


class IpAclConfig(_Config):
    allow: list[Cidr] = []
    deny: list[Cidr] = []
    trusted_proxies: list[Cidr] = []


class UaFilterConfig(_Config):
    allow: list[Regex] = []
    deny: list[Regex] = []


class DomainAclConfig(_Config):
    allow_hosts: list[str] = []
    allow_referers: list[str] = []


class ApiAclConfig(_Config):
    allow_consumers: list[str] = []
    allow_groups: list[str] = []
    deny_consumers: list[str] = []
    methods: list[Token] = []


class CorsConfig(_Config):
    allow_origins: list[str] = ["*"]
    allow_methods: list[Token] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    allow_headers: list[HeaderName] = []  # "*" is a token too
    expose_headers: list[HeaderName] = []
    allow_credentials: bool = False
    max_age: Ms = 0

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin.startswith("~"):
                _regex(origin[1:])
            else:
                require(header_value_problem("allow_origins", origin))  # echoed in Access-Control-Allow-Origin
        return v


class RateLimitConfig(_Config):
    algorithm: Literal["token_bucket", "leaky_bucket", "fixed_window", "sliding_window"] = "token_bucket"
    rate: int = Field(gt=0, le=MAX_COUNT)
    per: Ms = 1000
    burst: int = Field(default=0, ge=0, le=MAX_COUNT)
    key: str | list[str] = "ip"
    scope: Literal["local", "redis"] = "local"
    redis: str | None = None
    prefix: str = "flux:rl"
    on_redis_error: Literal["allow", "deny", "local"] = "local"
    leaky_mode: Literal["queue", "reject"] = "reject"
    max_queue_delay: Ms = 1000
    sliding_mode: Literal["log", "counter"] = "counter"
    status: int = Field(default=429, ge=400, le=599)
    headers: bool = Field(default=True, description="RateLimit-* fields on every answer (Retry-After on refusals)")

    @field_validator("key")
    @classmethod
    def _key(cls, v: str | list[str]) -> str | list[str]:
        for part in [v] if isinstance(v, str) else v:
            if part not in ("ip", "consumer", "route") and not re.fullmatch(r"header:[A-Za-z0-9-]+", part):
                raise ValueError(f"bad key {part!r}: use ip, consumer, route or header:NAME")
        return v

    @field_validator("per")
    @classmethod
    def _per(cls, v: int) -> int:
        if v <= 0:
            raise ValueError("must be a positive duration")
        return v


class FallbackConfig(_Config):
    multiline_fields = _Config.multiline_fields | {"body"}

    status: int = Field(default=503, ge=100, le=599)
    headers: dict[str, str] = {}
    body: str = Field(default="", max_length=1 << 20)
    cluster: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        return checked_headers(v)


class CircuitBreakerConfig(_Config):
    failure_threshold: int = Field(default=5, ge=0, le=MAX_COUNT)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    min_requests: int = Field(default=20, ge=1, le=MAX_COUNT)
    window: Ms = 10_000
    slow_call_ms: int = Field(default=0, ge=0, le=MAX_DURATION_MS)
    slow_call_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    open_for: Ms = 30_000
    half_open_requests: int = Field(default=3, ge=1, le=MAX_COUNT)
    fallback: FallbackConfig | None = None


# -- header and host values as the rewrite policies send them --------------------------------
# RequestRewritePolicy / ResponseRewritePolicy write header names and values with
# .encode("latin-1") and the host with .encode("idna"), on every request; the checks of
# fluxcommon.wire (re-exported here) say ahead of time whether a value would fail there or
# break the message (CR/LF: header injection).


class HeaderOps(_Config):
    add: dict[str, str] = {}
    set: dict[str, str] = {}
    remove: list[str] = []

    @field_validator("add", "set")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        return checked_headers(v)

    @field_validator("remove")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for name in v:
            require(header_name_problem(name))
        return v


class RequestRewriteConfig(_Config):
    headers: HeaderOps = HeaderOps()
    path_prefix: str | None = None
    path_regex: list[str] | None = None
    host: str | None = None

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, v: str | None) -> str | None:
        if v is not None:
            require(path_problem(v, query=False))
        return v

    @field_validator("path_regex")
    @classmethod
    def _pair(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) != 2:
                raise ValueError("give [pattern, replacement]")
            _regex(v[0])
            pattern = re.compile(v[0])
            problem = regex_replacement_problem(v[1], pattern.groups, set(pattern.groupindex))
            if problem:
                raise ValueError(f"the replacement {v[1]!r}: {problem}")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        problem = host_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v


class ResponseRewriteConfig(_Config):
    headers: HeaderOps = HeaderOps()
    status: int | None = Field(default=None, ge=100, le=599)


class RedirectConfig(_Config):
    to: str
    status: Literal[301, 302, 303, 307, 308] = 302
    keep_path: bool = False

    @field_validator("to")
    @classmethod
    def _to(cls, v: str) -> str:
        require(location_problem(v))  # sent as the Location header
        return v


SCHEMAS: dict[str, type[_Config]] = {
    "jwt": JwtConfig,
    "oauth2": OAuth2Config,
    "api_key": ApiKeyConfig,
    "basic_auth": BasicAuthConfig,
    "ip_acl": IpAclConfig,
    "ua_filter": UaFilterConfig,
    "domain_acl": DomainAclConfig,
    "api_acl": ApiAclConfig,
    "cors": CorsConfig,
    "rate_limit": RateLimitConfig,
    "circuit_breaker": CircuitBreakerConfig,
    "request_rewrite": RequestRewriteConfig,
    "response_rewrite": ResponseRewriteConfig,
    "redirect": RedirectConfig,
}


def parse_policy_config(policy_type: str, config: dict[str, Any]) -> _Config:
    schema = SCHEMAS.get(policy_type)
    if schema is None:
        raise PolicyConfigError("", f"unknown policy type {policy_type!r}")
    try:
        return schema.model_validate(config)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise PolicyConfigError(field, err["msg"].removeprefix("Value error, ")) from None


def validate_policy_config(policy_type: str, config: dict[str, Any]) -> None:
    parse_policy_config(policy_type, config)


def config_problems(policy_type: str, config: Any) -> list[tuple[str, str]]:
    """Every problem of a policy's config at once, as ("config.FIELD", message); unknown keys
    with a did-you-mean. [] when the config is good (or the type unknown: the type's own error)."""
    schema = SCHEMAS.get(policy_type)
    if schema is None:
        return []
    try:
        schema.model_validate(config)
    except ValidationError as exc:
        out = []
        for err in exc.errors(include_url=False):
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tagged-union[")))]
            field = "config" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
            if err["type"] == "extra_forbidden":
                out.append((field, unknown_field(schema, loc)))
            else:
                msg = str(err["msg"]).removeprefix("Value error, ")
                out.append((field, "required" if msg == "Field required" else msg))
        return out
    return []
