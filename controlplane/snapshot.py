"""Render a ConfigSet into the per-node-group `flux.v1.Snapshot` protos.

Rendering is a pure function of (config, version, group): the same stored
state always gives the same bytes (serialise with `deterministic=True`). A
group's snapshot holds its listeners and tunnels, the routes bound to those
listeners (or to any http listener), and what those refer to: clusters,
policies (plus every global one), certificates; consumers go to every group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from google.protobuf import struct_pb2

from controlplane.registry.types import Selector
from controlplane.spec import (
    CertificateSpec,
    ClusterSpec,
    ConfigSet,
    ConsumerSpec,
    ListenerSpec,
    PolicySpec,
    RouteSpec,
    TunnelSpec,
)
from controlplane.spec.cluster import ServiceSelectorSpec
from controlplane.spec.consumer import ApiKeyCredential, BasicAuthCredential, JwtCredential, MtlsCredential
from controlplane.spec.tunnel import parse_rate
from flux.v1 import config_pb2 as pb

SNAPSHOT_TYPE_URL = "type.googleapis.com/flux.v1.Snapshot"


class RegistryView(Protocol):
    """What rendering needs of the service registry (controlplane.registry.store implements it)."""

    def endpoints(self, selector: Selector) -> list[pb.Endpoint]: ...

    def service_index(self, name: str) -> int: ...


class _NoRegistry:
    def endpoints(self, selector: Selector) -> list[pb.Endpoint]:
        return []

    def service_index(self, name: str) -> int:
        return 0


NO_REGISTRY: RegistryView = _NoRegistry()


def strategy(selector: ServiceSelectorSpec, registry: RegistryView | None = None) -> str:
    """The routing strategy of a service cluster: the service's, from the registry, if it has one."""
    spec = getattr(registry, "service_spec", lambda _name: None)(selector.name) if registry else None
    return getattr(spec, "strategy", "") or "round_robin"


def node_groups(cfg: ConfigSet) -> set[str]:
    groups = {"default"}
    groups.update(lst.node_group for lst in cfg["listeners"].values())  # type: ignore[attr-defined]
    groups.update(t.node_group for t in cfg["tunnels"].values())  # type: ignore[attr-defined]
    return groups


def _listener(spec: ListenerSpec) -> pb.Listener:
    return pb.Listener(
        name=spec.name,
        protocol=pb.Protocol.Value(f"PROTOCOL_{spec.protocol.upper()}"),
        address=spec.address,
        port=spec.port,
        node_group=spec.node_group,
        policies=spec.policies,
        certificates=spec.certificates,
        cluster=spec.cluster or "",
        timeouts=(
            pb.ListenerTimeouts(
                header_ms=spec.timeouts.header, body_idle_ms=spec.timeouts.body_idle, idle_ms=spec.timeouts.idle
            )
            if spec.timeouts is not None
            else None
        ),
        limits=(
            pb.ListenerLimits(
                max_connections=spec.limits.max_connections,
                max_connections_per_ip=spec.limits.max_connections_per_ip,
            )
            if spec.limits is not None
            else None
        ),
        path_normalization=(
            pb.PathNormalization(
                merge_slashes=spec.path_normalization.merge_slashes,
                escaped_slashes=pb.EscapedSlashes.Value(
                    f"ESCAPED_SLASHES_{spec.path_normalization.escaped_slashes.upper()}"
                ),
            )
            if spec.path_normalization is not None
            else None
        ),
        tls=(
            pb.ListenerTls(
                min_version=spec.tls.min_version,
                ciphers=spec.tls.ciphers,
                client_ca=spec.tls.client_ca,
                client_auth=pb.ClientAuth.Value(f"CLIENT_AUTH_{spec.tls.client_auth.upper()}"),
            )
            if spec.tls is not None
            else None
        ),
        mode=pb.ListenerMode.Value(f"LISTENER_MODE_{spec.mode.upper()}"),
        http2=spec.http2,
        forward=(
            pb.ForwardProxy(
                allow_hosts=spec.forward.allow_hosts,
                allow_ports=spec.forward.allow_ports,
                deny_private=spec.forward.deny_private,
            )
            if spec.forward is not None
            else None
        ),
    )


def _cluster(spec: ClusterSpec, registry: RegistryView) -> pb.Cluster:
    msg = pb.Cluster(
        name=spec.name,
        lb=pb.LbPolicy.Value(f"LB_POLICY_{spec.lb.upper()}"),
        hash_on=spec.hash_on or "",
        endpoints=[
            pb.Endpoint(
                address=e.address,
                port=e.port,
                weight=e.weight,
                zone=e.zone,
                version=e.version,
                metadata=e.metadata,
                draining=e.draining,
            )
            for e in spec.endpoints
        ],
        outlier_detection=pb.OutlierDetection(
            consecutive_failures=spec.outlier_detection.consecutive_failures,
            consecutive_5xx=spec.outlier_detection.consecutive_5xx,
            base_ejection_ms=spec.outlier_detection.base_ejection,
            max_ejection_ms=spec.outlier_detection.max_ejection,
            max_ejection_percent=spec.outlier_detection.max_ejection_percent,
        ),
        timeouts=pb.Timeouts(connect_ms=spec.timeouts.connect, read_ms=spec.timeouts.read, idle_ms=spec.timeouts.idle),
        pool=pb.ConnectionPool(
            max_connections=spec.pool.max_connections,
            max_idle=spec.pool.max_idle,
            idle_timeout_ms=spec.pool.idle_timeout,
            max_pending=spec.pool.max_pending,
            max_requests=spec.pool.max_requests,
        ),
        policies=spec.policies,
        scheme=spec.scheme,
        tunnel=spec.tunnel or "",
        protocol=spec.protocol,
    )
    if spec.tls is not None:
        t = spec.tls
        msg.tls.CopyFrom(pb.UpstreamTls(sni=t.sni, ca=t.ca, verify=t.verify, certificate=t.certificate or ""))
    if spec.session_affinity:
        sa = spec.session_affinity
        msg.session_affinity.CopyFrom(pb.SessionAffinity(cookie=sa.cookie, ttl_ms=sa.ttl, path=sa.path))
    if spec.health_check:
        hc = spec.health_check
        msg.health_check.CopyFrom(
            pb.HealthCheck(
                type=hc.type,
                path=hc.path,
                host=hc.host,
                interval_ms=hc.interval,
                timeout_ms=hc.timeout,
                healthy_threshold=hc.healthy_threshold,
                unhealthy_threshold=hc.unhealthy_threshold,
                expected_statuses=hc.expected_statuses,
            )
        )
    if spec.service:
        sv = spec.service
        msg.service.CopyFrom(
            pb.ServiceSelector(
                name=sv.name,
                tags=sv.tags,
                version=sv.version,
                zone=sv.zone,
                namespace=sv.namespace,
                strategy=strategy(sv, registry),
            )
        )
        msg.endpoints.extend(registry.endpoints(Selector(sv.name, sv.namespace, tuple(sv.tags), sv.version, sv.zone)))
    return msg


def _route(spec: RouteSpec) -> pb.Route:
    msg = pb.Route(
        name=spec.name,
        listener=spec.listener or "",
        hosts=spec.hosts,
        path=spec.path,
        path_type=pb.PathType.Value(f"PATH_TYPE_{spec.path_type.upper()}"),
        methods=spec.methods,
        headers=spec.headers,
        cluster=spec.cluster or "",
        clusters=[pb.WeightedCluster(name=c.name, weight=c.weight) for c in spec.clusters],
        priority=spec.priority,
        policies=spec.policies,
        timeout_ms=spec.timeout,
        prefix_rewrite=spec.prefix_rewrite or "",
        host_rewrite=spec.host_rewrite or "",
        grpc_web=spec.grpc_web,
    )
    if spec.grayscale:
        gs = spec.grayscale
        sticky = gs.sticky
        msg.grayscale.CopyFrom(
            pb.Grayscale(
                versions=gs.versions,
                rules=[
                    pb.GrayRule(
                        headers=r.headers, cookies=r.cookies, consumer_group=r.consumer_group, version=r.version
                    )
                    for r in gs.rules
                ],
                sticky_cookie=(sticky.cookie or "") if sticky else "",
                sticky_ttl_ms=sticky.ttl if sticky else 0,
                sticky_hash=(sticky.hash or "") if sticky else "",
            )
        )
    if spec.retry:
        r = spec.retry
        msg.retry.CopyFrom(
            pb.RetryPolicy(
                attempts=r.attempts,
                per_try_timeout_ms=r.per_try_timeout,
                backoff_ms=r.backoff,
                retry_on=r.retry_on,
                retry_non_idempotent=r.retry_non_idempotent,
            )
        )
    return msg


def _policy(spec: PolicySpec) -> pb.Policy:
    config = struct_pb2.Struct()
    config.update(spec.config)
    return pb.Policy(name=spec.name, type=spec.type, config=config, is_global=spec.global_)


def _consumer(spec: ConsumerSpec) -> pb.Consumer:
    creds = []
    for c in spec.credentials:
        if isinstance(c, ApiKeyCredential):
            creds.append(pb.Credential(type="api_key", key_sha256=c.key_sha256 or ""))
        elif isinstance(c, JwtCredential):
            creds.append(
                pb.Credential(
                    type="jwt",
                    issuer=c.issuer,
                    algorithm=c.algorithm,
                    secret=c.secret or "",
                    public_key=c.public_key or "",
                )
            )
        elif isinstance(c, BasicAuthCredential):
            creds.append(pb.Credential(type="basic_auth", username=c.username, password_hash=c.password_hash or ""))
        elif isinstance(c, MtlsCredential):
            creds.append(pb.Credential(type="mtls", subject=c.subject))
    return pb.Consumer(name=spec.name, groups=spec.groups, credentials=creds, metadata=spec.metadata)


def _certificate(spec: CertificateSpec) -> pb.Certificate:
    return pb.Certificate(name=spec.name, snis=spec.snis, cert_pem=spec.cert, key_pem=spec.key)


def _tunnel(spec: TunnelSpec) -> pb.Tunnel:
    return pb.Tunnel(
        name=spec.name,
        node_group=spec.node_group,
        bind_port=spec.bind_port,
        bind_address=spec.bind_address,
        tokens=spec.all_tokens(),
        allow_ports=spec.allow_ports,
        vhost_http_port=spec.vhost_http_port,
        vhost_https_port=spec.vhost_https_port,
        subdomain_host=spec.subdomain_host,
        tls_force=spec.tls.force,
        tls_certificate=spec.tls.certificate or "",
        tls_client_ca_pem=spec.tls.client_ca or "",
        mappings=[
            pb.TunnelMapping(
                name=m.name,
                agent=m.agent,
                type=m.type,
                remote_port=m.remote_port,
                local_ip=m.local_ip,
                local_port=m.local_port,
            )
            for m in spec.mappings
        ],
        heartbeat_timeout_ms=spec.heartbeat_timeout,
        users=[
            pb.TunnelUser(
                name=u.name,
                token=u.token,
                allow_ports=u.allow_ports,
                domains=u.domains,
                max_proxies=u.max_proxies,
                bandwidth_limit=parse_rate(u.bandwidth_limit),
            )
            for u in spec.users
        ],
        domains=spec.domains,
        vhost_overrides_routes=spec.vhost_overrides_routes,
        tcpmux_httpconnect_port=spec.tcpmux_httpconnect_port,
        tcpmux_passthrough=spec.tcpmux_passthrough,
    )


def _sorted(items: Iterable[object]) -> list:  # type: ignore[type-arg]
    return sorted(items, key=lambda x: x.name)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class GroupView:
    """What one node group's snapshot holds, by name (from `select`)."""

    listeners: list[ListenerSpec]
    routes: list[RouteSpec]
    clusters: list[ClusterSpec]
    policies: list[PolicySpec]
    tunnels: list[TunnelSpec]
    certificates: set[str]

    @property
    def services(self) -> set[str]:
        """Registry services whose instances the group's clusters use."""
        return {c.service.name for c in self.clusters if c.service is not None}


def select(cfg: ConfigSet, group: str) -> GroupView:
    listeners: list[ListenerSpec] = [x for x in _sorted(cfg["listeners"].values()) if x.node_group == group]
    names = {x.name for x in listeners}
    has_http = any(x.protocol in ("http", "https") for x in listeners)
    routes: list[RouteSpec] = [
        r for r in _sorted(cfg["routes"].values()) if (r.listener in names if r.listener else has_http)
    ]
    tunnels: list[TunnelSpec] = [t for t in _sorted(cfg["tunnels"].values()) if t.node_group == group]

    cluster_names = {x.cluster for x in listeners if x.cluster}
    for r in routes:
        cluster_names.update(r.cluster_names())
    policy_names = {p for x in listeners for p in x.policies} | {p for r in routes for p in r.policies}
    # Circuit-breaker fallbacks and cluster-level policies can pull in more clusters and policies.
    for _ in range(3):
        for name in list(cluster_names):
            c = cfg.get("clusters", name)
            if isinstance(c, ClusterSpec):
                policy_names.update(c.policies)
        for name in list(policy_names):
            p = cfg.get("policies", name)
            if isinstance(p, PolicySpec) and p.type == "circuit_breaker":
                fallback = p.config.get("fallback") or {}
                if isinstance(fallback, dict) and fallback.get("cluster"):
                    cluster_names.add(str(fallback["cluster"]))
    policies = [p for p in _sorted(cfg["policies"].values()) if p.name in policy_names or p.global_]
    clusters = [c for c in _sorted(cfg["clusters"].values()) if c.name in cluster_names]
    cert_names = (
        {c for x in listeners for c in x.certificates}
        | {t.tls.certificate for t in tunnels if t.tls.certificate}
        | {c.tls.certificate for c in clusters if c.tls is not None and c.tls.certificate}
    )
    return GroupView(listeners, routes, clusters, policies, tunnels, cert_names)


def snapshot_version(config_version: int, services: Iterable[str], registry: RegistryView | None) -> str:
    """ "C" for a group that uses no registry service, else "C.R" with R the highest modify
    index of its services: the same database state gives the same version on every control plane."""
    services = list(services)
    if not services or registry is None:
        return str(config_version)
    return f"{config_version}.{max(registry.service_index(name) for name in services)}"


def render_snapshot(
    cfg: ConfigSet, version: int | str, group: str, registry: RegistryView | None = None
) -> pb.Snapshot:
    """The group's snapshot; `version` as `snapshot_version` gives it (an int is the config version)."""
    registry = registry or NO_REGISTRY
    view = select(cfg, group)
    listeners, routes, tunnels, clusters, policies, cert_names = (
        view.listeners, view.routes, view.tunnels, view.clusters, view.policies, view.certificates,
    )  # fmt: skip
    return pb.Snapshot(
        version=str(version),
        node_group=group,
        listeners=[_listener(x) for x in listeners],
        routes=[_route(r) for r in routes],
        clusters=[_cluster(c, registry) for c in clusters],
        policies=[_policy(p) for p in policies],
        consumers=[_consumer(c) for c in _sorted(cfg["consumers"].values())],
        certificates=[_certificate(c) for c in _sorted(cfg["certificates"].values()) if c.name in cert_names],
        tunnels=[_tunnel(t) for t in tunnels],
    )
