"""Immutable runtime tables of one applied config version.

A `RuntimeConfig` is built once per snapshot by the compiler and published by
swapping one reference (`ConfigHolder.current`). Requests read the reference
once at their start and keep using that object, so a config swap never
changes a request in flight. The only mutable things these tables point to are
the endpoint states and connection pools, which outlive versions on purpose
(health and warm connections survive a config push).
"""

from __future__ import annotations

import random
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dataplane.balancing import AffinityIndex, Balancer, EndpointState
from dataplane.health.state import ActiveCheckPolicy, OutlierPolicy
from dataplane.http.forward import ForwardRules
from dataplane.http.target import DEFAULT_RULES, PathRules
from dataplane.policies.base import ConsumerIndex
from dataplane.policies.chain import EMPTY_CHAIN, PolicyChain
from dataplane.routing import RouteMatcher
from dataplane.routing.grayscale import GrayscalePlan
from dataplane.tls.contexts import ServerTls, UpstreamTls
from dataplane.upstream.limits import PoolLimits
from flux.v1 import config_pb2 as pb

if TYPE_CHECKING:
    from dataplane.upstream.pool import EndpointPool


class ClusterState:
    """Counters of a cluster that outlive config versions (kept by the compiler's registry)."""

    __slots__ = ("in_flight",)

    def __init__(self) -> None:
        self.in_flight = 0


@dataclass(frozen=True, slots=True)
class HashKey:
    """Where a consistent-hash key comes from: header/cookie (with name), ip or path."""

    source: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Affinity:
    cookie: str
    ttl_ms: int
    path: str
    index: AffinityIndex


@dataclass(frozen=True, slots=True, eq=False)
class ClusterRuntime:
    name: str
    endpoints: tuple[EndpointState, ...]
    balancer: Balancer
    pools: dict[str, EndpointPool]  # by endpoint key
    hash_on: HashKey | None
    affinity: Affinity | None
    connect_timeout: float
    read_timeout: float
    pool_limits: PoolLimits
    health_check: pb.HealthCheck | None
    check_policy: ActiveCheckPolicy
    outlier: OutlierPolicy
    scheme: str
    keyed: bool = False  # the balancer wants a hash key (consistent_hash / ip_hash)
    chain: PolicyChain = EMPTY_CHAIN  # the cluster's own policies (after the route's)
    by_version: dict[str, Balancer] = field(default_factory=dict)  # grayscale: a balancer per instance version
    zone_balancer: Balancer | None = None  # prefer_zone: the endpoints in this node's zone
    max_requests: int = 0  # concurrent requests allowed to the cluster (0: no limit)
    state: ClusterState = field(default_factory=lambda: ClusterState())
    tls: UpstreamTls | None = None  # TLS to the endpoints
    protocol: str = "http1"  # http1 | http2


@dataclass(frozen=True, slots=True, eq=False)
class RouteRuntime:
    name: str
    clusters: tuple[ClusterRuntime, ...]
    cumulative: tuple[int, ...]
    timeout: float
    retry: pb.RetryPolicy | None
    match_prefix: str
    prefix_rewrite: str | None
    host_rewrite: bytes | None
    attempts: int = 2
    retry_on_idempotent: frozenset[str] = frozenset({"connect_failure", "reset"})
    retry_on_other: frozenset[str] = frozenset({"connect_failure"})
    chain: PolicyChain = EMPTY_CHAIN  # global, listener and route policies, in order
    grayscale: GrayscalePlan | None = None
    grpc_web: bool = False  # translate gRPC-Web requests for a gRPC upstream

    def pick_cluster(self) -> ClusterRuntime:
        clusters = self.clusters
        if len(clusters) == 1:
            return clusters[0]
        return clusters[bisect_right(self.cumulative, random.randrange(self.cumulative[-1]))]


@dataclass(frozen=True, slots=True)
class ListenerSettings:
    """A listener's client-side timeouts (seconds; 0: the node's default), connection limits
    (per node; 0: none) and path normalisation rules."""

    header_timeout: float = 0.0
    body_idle_timeout: float = 0.0
    idle_timeout: float = 0.0
    max_connections: int = 0
    max_connections_per_ip: int = 0
    path_rules: PathRules = DEFAULT_RULES
    http2: bool = False  # h2c with prior knowledge (http listeners); https listeners offer h2 by ALPN


DEFAULT_LISTENER_SETTINGS = ListenerSettings()


class TlsHolder:
    """An https listener's current `ServerTls`; the worker swaps in new contexts (new
    session-ticket keys) every few hours without a new config version."""

    __slots__ = ("current",)

    def __init__(self, tls: ServerTls) -> None:
        self.current = tls


@dataclass(frozen=True, slots=True, eq=False)
class ListenerRuntime:
    name: str
    protocol: str  # http | https | tcp | udp
    address: str
    port: int
    matcher: RouteMatcher
    cluster: ClusterRuntime | None = None
    settings: ListenerSettings = DEFAULT_LISTENER_SETTINGS
    tls: TlsHolder | None = None  # https listeners
    forward: ForwardRules | None = None  # mode: forward
    chain: PolicyChain = EMPTY_CHAIN  # forward mode: global and listener policies (no routes)

    @property
    def socket_key(self) -> tuple[str, str, int]:
        return ("udp" if self.protocol == "udp" else "tcp", self.address, self.port)


@dataclass(frozen=True, eq=False)
class RuntimeConfig:
    version: str
    node_group: str
    snapshot: pb.Snapshot
    listeners: dict[str, ListenerRuntime] = field(default_factory=dict)
    clusters: dict[str, ClusterRuntime] = field(default_factory=dict)
    policies: dict[str, Any] = field(default_factory=dict)  # built policies by name (for metrics)
    consumers: ConsumerIndex | None = None  # for identities the policies do not establish (mtls)


class ConfigHolder:
    """The one mutable reference to the current RuntimeConfig."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: RuntimeConfig | None = None
