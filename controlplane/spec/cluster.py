"""Cluster: a named set of upstream endpoints and how to balance and check them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from controlplane.spec._pem import check_ca_bundle
from controlplane.spec._types import Address, Duration, Name, Port, Resource, Strict
from fluxcommon.wire import host_problem, path_problem, require

LbName = Literal["round_robin", "weighted_round_robin", "least_conn", "consistent_hash", "ip_hash"]


class UpstreamTlsSpec(Strict):
    """TLS from the nodes to the endpoints: the name sent and verified (default: the endpoint's
    address), the CAs trusted (default: the system's), and a client certificate for mutual TLS."""

    multiline_fields = Strict.multiline_fields | {"ca"}  # PEM

    sni: str = ""
    ca: str = ""
    verify: bool = True
    certificate: Name | None = None

    @field_validator("sni")
    @classmethod
    def _sni(cls, v: str) -> str:
        if v:
            require(host_problem(v, port=False))
        return v

    @field_validator("ca")
    @classmethod
    def _ca(cls, v: str) -> str:
        return check_ca_bundle(v) if v else v


class EndpointSpec(Strict):
    address: Address
    port: Port
    weight: int = Field(default=1, gt=0, le=10_000)
    zone: str = ""
    version: str = ""
    metadata: dict[str, str] = {}
    draining: bool = False


class HealthCheckSpec(Strict):
    type: Literal["http", "tcp"] = "http"
    path: str = "/"
    host: str = ""
    interval: Duration = 5000
    timeout: Duration = Field(default=0, description="default: 2s, or the interval when that is shorter")
    healthy_threshold: int = Field(default=2, ge=1, le=100)
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)
    expected_statuses: list[Annotated[int, Field(ge=100, le=599)]] = []

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        require(path_problem(v))  # the request line of every check
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if v:
            require(host_problem(v))  # the checks' Host header
        return v

    @model_validator(mode="after")
    def _timing(self) -> HealthCheckSpec:
        if self.interval < 100:
            raise ValueError("interval: at least 100ms")
        if self.timeout == 0:
            object.__setattr__(self, "timeout", min(2000, self.interval))
        if self.timeout > self.interval:
            raise ValueError("timeout: must be no longer than interval")
        return self


class OutlierDetectionSpec(Strict):
    """Passive ejection of endpoints by the outcome of proxied requests (Envoy's outlier detection)."""

    consecutive_failures: int = Field(
        default=5, ge=1, le=1000, description="gateway failures in a row (connect, reset, timeout, 502-504)"
    )
    consecutive_5xx: int = Field(
        default=0, ge=0, le=1000, description="any 5xx response (or gateway failure) in a row, as Envoy's; 0: off"
    )
    base_ejection: Duration = 30_000
    max_ejection: Duration = 300_000
    max_ejection_percent: int = Field(default=50, ge=0, le=100)


class TimeoutsSpec(Strict):
    connect: Duration = 2000
    read: Duration = 30_000
    idle: Duration = 60_000


class PoolSpec(Strict):
    max_connections: int = Field(default=1024, ge=1, le=1_000_000)
    max_idle: int = Field(default=128, ge=0, le=1_000_000)
    idle_timeout: Duration = 60_000
    max_pending: int = Field(default=1024, ge=0, le=1_000_000)
    max_requests: int = Field(default=0, ge=0, le=1_000_000, description="0 = unlimited concurrent requests")


class SessionAffinitySpec(Strict):
    cookie: str = Field(pattern=r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
    ttl: Duration = 0
    path: str = Field(default="/", pattern=r"^/[^;\x00-\x1f\x7f]*$")


class ServiceSelectorSpec(Strict):
    name: Name
    namespace: str = ""
    tags: list[str] = []
    version: str = ""
    zone: str = ""


class ClusterSpec(Resource):
    lb: LbName = "round_robin"
    hash_on: str | None = Field(
        default=None, pattern=r"^(header:[A-Za-z0-9-]+|cookie:[!#$%&'*+\-.^_`|~0-9A-Za-z]+|ip|path)$"
    )
    session_affinity: SessionAffinitySpec | None = None
    endpoints: list[EndpointSpec] = []
    service: ServiceSelectorSpec | None = None
    # Endpoints are the tunnel agents serving this http/tcp proxy (or load-balancing group) name.
    tunnel: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f|]+$")
    health_check: HealthCheckSpec | None = None
    outlier_detection: OutlierDetectionSpec = OutlierDetectionSpec()
    timeouts: TimeoutsSpec = TimeoutsSpec()
    pool: PoolSpec = PoolSpec()
    scheme: Literal["http", "https"] = "http"
    tls: UpstreamTlsSpec | None = None  # scheme https without tls: verified against the system's CAs
    protocol: Literal["http1", "http2"] = "http1"  # http2: h2c, or h2 by ALPN with tls (gRPC needs it)
    policies: list[Name] = []
    description: str = ""

    @field_validator("service", mode="before")
    @classmethod
    def _service_by_name(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSpec:
        if self.endpoints and self.service:
            raise ValueError("service: give either endpoints or service, not both")
        if self.tunnel and (self.endpoints or self.service):
            raise ValueError("tunnel: give one of endpoints, service or tunnel")
        if self.lb == "consistent_hash" and not self.hash_on:
            raise ValueError("hash_on: consistent_hash needs hash_on (header:NAME, cookie:NAME, ip or path)")
        if self.hash_on and self.lb != "consistent_hash":
            raise ValueError("hash_on: only used with lb: consistent_hash")
        seen: set[tuple[str, int]] = set()
        for i, ep in enumerate(self.endpoints):
            key = (ep.address, ep.port)
            if key in seen:
                raise ValueError(f"endpoints[{i}]: duplicate endpoint {ep.address}:{ep.port}")
            seen.add(key)
        return self
