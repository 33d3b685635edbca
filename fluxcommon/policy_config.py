"""Config schemas of every policy type, shared by control plane (write-time
validation) and node (snapshot compilation).

`parse_policy_config(type, config)` returns the typed config or raises
`PolicyConfigError` naming the field at fault.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from fluxcommon.durations import parse_duration_ms


class PolicyConfigError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"config.{field}: {message}" if field else f"config: {message}")
        self.field = f"config.{field}" if field else "config"
        self.message = message


Ms = Annotated[int, BeforeValidator(parse_duration_ms)]


class _Config(BaseModel):
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
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


Cidr = Annotated[str, BeforeValidator(lambda v: _cidr(v) if isinstance(v, str) else v)]
HttpUrl = Annotated[str, BeforeValidator(lambda v: _http_url(v) if isinstance(v, str) else v)]
Regex = Annotated[str, BeforeValidator(lambda v: _regex(v) if isinstance(v, str) else v)]
TokenSource = Annotated[str, Field(pattern=r"^(header:[A-Za-z0-9-]+|query:[A-Za-z0-9_.-]+|cookie:\S+)$")]


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
    forward_header: str | None = None


class OAuth2Config(_AuthConfig):
    introspection_url: HttpUrl
    client_id: str
    client_secret: str
    required_scopes: list[str] = []
    cache_ttl: Ms = 60_000
    from_: TokenSource = Field(default="header:Authorization", alias="from")
    timeout: Ms = 2000


class ApiKeyConfig(_AuthConfig):
    header: str = "apikey"
    query: str | None = None
    hide_credentials: bool = True


class BasicAuthConfig(_AuthConfig):
    realm: str = "flux"
    hide_credentials: bool = True


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
    methods: list[str] = []


class CorsConfig(_Config):
    allow_origins: list[str] = ["*"]
    allow_methods: list[str] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    allow_headers: list[str] = []
    expose_headers: list[str] = []
    allow_credentials: bool = False
    max_age: Ms = 0

    @field_validator("allow_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for origin in v:
            if origin.startswith("~"):
                _regex(origin[1:])
        return v


class RateLimitConfig(_Config):
    algorithm: Literal["token_bucket", "leaky_bucket", "fixed_window", "sliding_window"] = "token_bucket"
    rate: int = Field(gt=0)
    per: Ms = 1000
    burst: int = Field(default=0, ge=0)
    key: str | list[str] = "ip"
    scope: Literal["local", "redis"] = "local"
    redis: str | None = None
    prefix: str = "flux:rl"
    on_redis_error: Literal["allow", "deny", "local"] = "local"
    leaky_mode: Literal["queue", "reject"] = "reject"
    max_queue_delay: Ms = 1000
    sliding_mode: Literal["log", "counter"] = "counter"
    status: int = Field(default=429, ge=400, le=599)

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
    status: int = Field(default=503, ge=100, le=599)
    headers: dict[str, str] = {}
    body: str = ""
    cluster: str | None = None


class CircuitBreakerConfig(_Config):
    failure_threshold: int = Field(default=5, ge=0)
    error_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    min_requests: int = Field(default=20, ge=1)
    window: Ms = 10_000
    slow_call_ms: int = Field(default=0, ge=0)
    slow_call_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    open_for: Ms = 30_000
    half_open_requests: int = Field(default=3, ge=1)
    fallback: FallbackConfig | None = None


# -- header and host values as the rewrite policies send them --------------------------------
# RequestRewritePolicy / ResponseRewritePolicy write header names and values with
# .encode("latin-1") and the host with .encode("idna"), on every request. These say, ahead of
# time, whether a value would fail there or break the message (CR/LF: header injection).
# (HeaderOps below does not call them yet; tunnel proxy options do.)

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::([0-9]{1,5}))?")


def _printable_latin1(c: str) -> bool:
    return c == "\t" or " " <= c <= "~" or "\xa0" <= c <= "\xff"


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be a header name (None: it can)."""
    return None if _HEADER_NAME.fullmatch(name) else f"{name!r} is not a header name"


def header_value_problem(name: str, value: str) -> str | None:
    """Why `value` cannot be sent as header `name`'s value: printable latin-1 (and tab) only."""
    if any(c in value for c in "\r\n\0"):
        return f"{name}: header values may not hold CR, LF or NUL"
    bad = next((c for c in value if not _printable_latin1(c)), None)
    if bad is not None:
        return f"{name}: header values are printable latin-1 text; {bad!r} is not"
    return None


def checked_headers(headers: dict[str, str]) -> dict[str, str]:
    """`headers` as given, or ValueError naming the first name or value that cannot be sent."""
    for name, value in headers.items():
        problem = header_name_problem(name) or header_value_problem(name, value)
        if problem:
            raise ValueError(problem)
    return headers


def host_problem(value: str) -> str | None:
    """Why `value` cannot be sent as a Host header (None: it can): a host name (IDNA, labels of
    1 to 63 letters, digits, '-' or '_', not starting or ending with '-'), an IPv4 address or a
    bracketed IPv6 address, with an optional :port."""
    m = _HOST_PORT.fullmatch(value)
    if m is None:
        return f"{value!r} is not a host or host:port"
    host, port = m.groups()
    if port is not None and not 0 < int(port) <= 65535:
        return f"{value!r}: port {port} is not 1 to 65535"
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{value!r}: {host} is not an IPv6 address"
        return None
    try:
        ascii_host = host.encode("idna").decode("ascii")
        value.encode("idna")  # as RequestRewritePolicy does
    except UnicodeError:
        return f"{value!r} is not a host name (IDNA, labels of 1 to 63 characters)"
    if not all(_HOST_LABEL.fullmatch(label) for label in ascii_host.removesuffix(".").split(".")):
        return f"{value!r} is not a host name (labels of letters, digits, '-' and '_', not starting or ending with '-')"
    return None


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
            problem = header_name_problem(name)
            if problem:
                raise ValueError(problem)
        return v


class RequestRewriteConfig(_Config):
    headers: HeaderOps = HeaderOps()
    path_prefix: str | None = None
    path_regex: list[str] | None = None
    host: str | None = None

    @field_validator("path_regex")
    @classmethod
    def _pair(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) != 2:
                raise ValueError("give [pattern, replacement]")
            _regex(v[0])
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
