"""The service registry's shared vocabulary: specs of services and instances, the runtime
instance record, and the interfaces between the registry store and its users.

Who uses what:
- the REST API and the Python client speak `ServiceSpec` / `InstanceSpec` (JSON shapes);
- the registry store (controlplane/registry/store.py) keeps `Instance` records and
  implements `Registry`;
- active health checks (controlplane/registry/health.py) call `Registry.set_health`;
- external-registry adapters (controlplane/registry/adapters/) call `Registry.sync_source`;
- the snapshot renderer reads `Registry.endpoints` (healthy instances of a service as
  proto endpoints) and `Registry.service_index` (what changed, for snapshot versions);
- anyone may `Registry.subscribe` to learn which services changed.

The registry is runtime state, not versioned gateway config: instances come and go
and heartbeat many times a second. Every change that matters to traffic (an instance
registered, removed, its health, status, weight or metadata changed) bumps one
monotonic registry index stored in the database, and the service's `modify_index`
takes that value; plain heartbeats bump nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

from pydantic import ConfigDict, Field, field_validator

from fluxcommon.durations import format_duration_ms, parse_duration_ms
from fluxcommon.netaddr import check_address
from fluxcommon.textfields import TextChecked
from fluxcommon.wire import path_problem, require

Status = Literal["up", "down", "draining", "out_of_service"]
Health = Literal["healthy", "unhealthy", "unknown"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class _Strict(TextChecked):
    """Unknown fields are errors; no string holds control characters (fluxcommon.textfields)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class ServiceCheckSpec(_Strict):
    """Active health check the control plane runs against a service's persistent instances."""

    multiline_fields = _Strict.multiline_fields | {"expect_body"}

    type: Literal["http", "tcp", "grpc"] = "http"
    path: str = "/healthz"  # http
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = []  # http: empty = 200-399
    expect_body: str | None = None  # http: substring the body must contain
    grpc_service: str = ""  # grpc: the name asked of grpc.health.v1.Health/Check ("" = the server)
    interval: str = "10s"
    timeout: str = "2s"
    healthy_threshold: int = Field(default=2, ge=1, le=100)
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)

    @field_validator("interval", "timeout")
    @classmethod
    def _duration(cls, v: str) -> str:
        return format_duration_ms(parse_duration_ms(v))

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        require(path_problem(v))  # the request line of every check
        return v


class ServiceSpec(_Strict):
    """A service (REST body of PUT /api/v1/services/{name}; `services:` in fluxctl YAML)."""

    name: str = Field(pattern=NAME_PATTERN)
    namespace: str = Field(default="default", pattern=NAME_PATTERN)
    group: str = ""
    tags: list[str] = []
    metadata: dict[str, str] = {}
    owner: str = ""
    health_check: ServiceCheckSpec | None = None
    strategy: Literal["round_robin", "prefer_zone"] = "round_robin"  # routing strategy for nodes
    description: str = ""


class InstanceSpec(_Strict):
    """An instance as registered (REST body of POST /api/v1/services/{name}/instances)."""

    id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")  # default: address:port
    address: str
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=0, le=10_000)  # 0: registered but takes no traffic
    version: str = ""
    zone: str = ""
    tags: list[str] = []
    metadata: dict[str, str] = {}
    ephemeral: bool = True  # ephemeral: expire without heartbeats; persistent: health-checked, never expire
    ttl: str = "30s"  # ephemeral only
    status: Status = "up"

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        return check_address(v)

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, v: str) -> str:
        ms = parse_duration_ms(v)
        if ms < 1000:
            raise ValueError("ttl: at least 1s")
        return format_duration_ms(ms)

    def instance_id(self) -> str:
        return self.id or (f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}")


@dataclass
class Instance:
    """One instance as the registry holds it."""

    id: str
    service: str
    address: str
    port: int
    weight: int = 1
    version: str = ""
    zone: str = ""
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    status: Status = "up"
    health: Health = "unknown"  # ephemeral instances: "healthy" while heartbeats arrive
    ephemeral: bool = True
    ttl_ms: int = 30_000
    last_heartbeat: float = 0.0  # unix seconds
    registered_at: float = 0.0  # unix seconds
    source: str = "api"  # "api", or "registry:<name>" for instances imported from an external registry
    modify_index: int = 0

    @property
    def serves(self) -> bool:
        """Whether nodes should send it traffic (draining ones keep only open requests)."""
        return self.status in ("up", "draining") and self.health != "unhealthy" and self.weight > 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "address": self.address,
            "port": self.port,
            "weight": self.weight,
            "version": self.version,
            "zone": self.zone,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "status": self.status,
            "health": self.health,
            "healthy": self.serves,
            "ephemeral": self.ephemeral,
            "ttl": format_duration_ms(self.ttl_ms),
            "last_heartbeat": self.last_heartbeat,
            "registered_at": self.registered_at,
            "source": self.source,
            "modify_index": self.modify_index,
        }


@dataclass(frozen=True)
class Selector:
    """Which instances of a service a cluster takes (cluster `service:` with filters)."""

    service: str
    namespace: str = ""
    tags: tuple[str, ...] = ()
    version: str = ""
    zone: str = ""


ChangeCallback = Callable[[set[str]], None]
"""Called (on the control plane's event loop) with the names of services that changed."""


class Registry(Protocol):
    """What the registry store offers the rest of the control plane."""

    @property
    def index(self) -> int:
        """The registry index (highest modify index of anything)."""

    def service_index(self, name: str) -> int:
        """Modify index of a service: the last change to it or its instances (0 if unknown)."""

    def instances(self, service: str) -> list[Instance]:
        """Every instance of a service, whatever its state."""

    def endpoints(self, selector: Selector) -> list[Any]:
        """The instances nodes should use, as `flux.v1.Endpoint` protos (draining ones marked)."""

    def set_health(self, service: str, instance_id: str, healthy: bool, detail: str) -> None:
        """Result of an active check that flipped an instance's health (after thresholds)."""

    def sync_source(self, source: str, services: Mapping[str, Iterable[InstanceSpec]]) -> None:
        """Make the instances that came from `source` exactly these (add, update, remove)."""

    def subscribe(self, callback: ChangeCallback) -> None:
        """Call `callback(services)` after every change that bumps the index."""
