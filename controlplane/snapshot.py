"""Render a ConfigSet into the per-node-group `flux.v1.Snapshot` protos.

Rendering is a pure function of (config, version, group): the same stored
state always gives the same bytes (serialise with `deterministic=True`). A
group's snapshot holds its listeners and tunnels, the routes bound to those
listeners (or to any http listener), and what those refer to: clusters,
policies (plus every global one), certificates; consumers go to every group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from google.protobuf import struct_pb2

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
from controlplane.spec.consumer import ApiKeyCredential, BasicAuthCredential, JwtCredential
from flux.v1 import config_pb2 as pb

SNAPSHOT_TYPE_URL = "type.googleapis.com/flux.v1.Snapshot"

EndpointResolver = Callable[[ClusterSpec], list[pb.Endpoint]]
"""Endpoints of a `service:` cluster, from the registry (empty when there is none)."""


def _no_registry(_cluster: ClusterSpec) -> list[pb.Endpoint]:
    return []


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
    )


def _cluster(spec: ClusterSpec, resolve: EndpointResolver) -> pb.Cluster:
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
    )
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
            pb.ServiceSelector(name=sv.name, tags=sv.tags, version=sv.version, zone=sv.zone, namespace=sv.namespace)
        )
        msg.endpoints.extend(resolve(spec))
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
    )


def _sorted(items: Iterable[object]) -> list:  # type: ignore[type-arg]
    return sorted(items, key=lambda x: x.name)  # type: ignore[attr-defined]


def render_snapshot(cfg: ConfigSet, version: int, group: str, resolve: EndpointResolver = _no_registry) -> pb.Snapshot:
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
    cert_names = {c for x in listeners for c in x.certificates} | {
        t.tls.certificate for t in tunnels if t.tls.certificate
    }
    return pb.Snapshot(
        version=str(version),
        node_group=group,
        listeners=[_listener(x) for x in listeners],
        routes=[_route(r) for r in routes],
        clusters=[_cluster(c, resolve) for c in clusters],
        policies=[_policy(p) for p in policies],
        consumers=[_consumer(c) for c in _sorted(cfg["consumers"].values())],
        certificates=[_certificate(c) for c in _sorted(cfg["certificates"].values()) if c.name in cert_names],
        tunnels=[_tunnel(t) for t in tunnels],
    )
