"""Compile a `flux.v1.Snapshot` into a `RuntimeConfig`, or refuse it whole.

Every problem (unknown cluster, bad regex, duplicate listener port, unknown
protocol, bad hash key) raises `CompileError` with a message naming the
resource, and nothing live has changed: endpoint config updates are staged and
applied by `Compiled.commit()` only after the swap is decided.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import TYPE_CHECKING

from dataplane.balancing import AffinityIndex, EndpointState, endpoint_key, make_balancer
from dataplane.config.isolation import Fault
from dataplane.config.runtime import (
    Affinity,
    ClusterRuntime,
    ClusterState,
    HashKey,
    ListenerRuntime,
    ListenerSettings,
    RouteRuntime,
    RuntimeConfig,
    TlsHolder,
)
from dataplane.config.wirecheck import check_snapshot
from dataplane.health.state import ActiveCheckPolicy, OutlierPolicy
from dataplane.http.forward import ForwardRules
from dataplane.http.target import PathRules, TargetError, canonical_route_path
from dataplane.policies.base import ConsumerIndex, Policy, PolicyEnv
from dataplane.policies.build import PolicyBuildError, build_policies
from dataplane.policies.chain import EMPTY_CHAIN, PolicyChain
from dataplane.routing import RouteMatcher, RouteRule
from dataplane.routing.grayscale import GrayRule, GrayscalePlan
from dataplane.tls.contexts import ServerTls, TlsConfigError, UpstreamTls
from dataplane.upstream.limits import PoolLimits
from flux.v1 import config_pb2 as pb

if TYPE_CHECKING:
    from dataplane.upstream.pool import EndpointPool

_LB = {
    pb.LB_POLICY_UNSPECIFIED: "round_robin",
    pb.LB_POLICY_ROUND_ROBIN: "round_robin",
    pb.LB_POLICY_WEIGHTED_ROUND_ROBIN: "weighted_round_robin",
    pb.LB_POLICY_LEAST_CONN: "least_conn",
    pb.LB_POLICY_CONSISTENT_HASH: "consistent_hash",
    pb.LB_POLICY_IP_HASH: "ip_hash",
}
_PROTOCOL = {
    pb.PROTOCOL_HTTP: "http",
    pb.PROTOCOL_HTTPS: "https",
    pb.PROTOCOL_TCP: "tcp",
    pb.PROTOCOL_UDP: "udp",
    pb.PROTOCOL_TLS: "tls",
}
_PATH_TYPE = {
    pb.PATH_TYPE_UNSPECIFIED: "prefix",
    pb.PATH_TYPE_PREFIX: "prefix",
    pb.PATH_TYPE_EXACT: "exact",
    pb.PATH_TYPE_REGEX: "regex",
}


#: Listeners the node adds to the control plane's snapshot itself (a tunnel server's vhost
#: port, see `dataplane.tunnel.vhost.overlay`) are named with this prefix, which control-plane
#: names (no '/') cannot have. A route without a listener applies to every control-plane
#: listener but not to these: they serve only the routes that name them, so a catch-all
#: gateway route is not exposed on a tunnel's port nor takes the domains its agents claim.
NODE_LISTENER_PREFIX = "tunnel/"

_ESCAPED_SLASHES = {
    pb.ESCAPED_SLASHES_UNSPECIFIED: "reject",
    pb.ESCAPED_SLASHES_REJECT: "reject",
    pb.ESCAPED_SLASHES_KEEP: "keep",
    pb.ESCAPED_SLASHES_UNESCAPE: "unescape",
}
_MAX_TIMEOUT_MS = 366 * 24 * 3600 * 1000

_DEFAULT_RETRY_ON = frozenset({"connect_failure", "reset"})
_CONNECT_ONLY = frozenset({"connect_failure"})


class CompileError(Exception):
    """A snapshot the node refuses (NACKs); the message names the resource at fault.

    `fault` is set when the error belongs to one resource and to this node (a certificate
    that does not load here): the worker then applies the rest (dataplane.config.isolation)."""

    def __init__(self, message: str, fault: Fault | None = None) -> None:
        super().__init__(message)
        self.fault = fault


PoolFactory = Callable[[str, str, int, PoolLimits], "EndpointPool"]


class EndpointRegistry:
    """Endpoint states by (cluster, endpoint key) and cluster counters by name, kept across config versions."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], EndpointState] = {}
        self.clusters: dict[str, ClusterState] = {}

    def retain(self, wanted: set[tuple[str, str]]) -> None:
        for key in [k for k in self.states if k not in wanted]:
            del self.states[key]


@dataclass
class Compiled:
    config: RuntimeConfig
    endpoint_updates: list[tuple[EndpointState, pb.Endpoint]] = field(default_factory=list)
    new_states: dict[tuple[str, str], EndpointState] = field(default_factory=dict)
    env: PolicyEnv = field(default_factory=PolicyEnv)

    def commit(self, registry: EndpointRegistry) -> None:
        """Make the staged endpoint changes live (after the config is swapped in)."""
        for ep, spec in self.endpoint_updates:
            ep.update_config(spec.weight or 1, spec.zone, spec.version, dict(spec.metadata), spec.draining)
        registry.states.update(self.new_states)
        wanted = {(c.name, ep.key) for c in self.config.clusters.values() for ep in c.endpoints}
        registry.retain(wanted)
        registry.clusters = {name: c.state for name, c in self.config.clusters.items()}
        self.env.services.retain()  # close policy helpers (JWKS caches, Redis clients) no longer used


def _hash_key(cluster: pb.Cluster) -> HashKey | None:
    if not cluster.hash_on:
        return None
    source, _, name = cluster.hash_on.partition(":")
    if source in ("header", "cookie") and name:
        return HashKey(source, name.lower() if source == "header" else name)
    if source in ("ip", "path") and not name:
        return HashKey(source)
    raise CompileError(f"cluster {cluster.name!r}: bad hash_on {cluster.hash_on!r}")


def _ms(value: int, default_ms: int) -> float:
    return (value or default_ms) / 1000.0


def _cluster(
    spec: pb.Cluster,
    registry: EndpointRegistry,
    pools: PoolFactory,
    out: Compiled,
    zone: str = "",
    certificates: dict[str, pb.Certificate] | None = None,
) -> ClusterRuntime:
    if spec.lb not in _LB:
        raise CompileError(f"cluster {spec.name!r}: unknown lb {spec.lb}")
    endpoints: list[EndpointState] = []
    pushed: list[tuple[EndpointState, pb.Endpoint]] = []  # version/zone as pushed: kept states update on commit
    seen: set[str] = set()
    for ep_spec in spec.endpoints:
        if not ep_spec.address or not 0 < ep_spec.port < 65536:
            raise CompileError(f"cluster {spec.name!r}: bad endpoint {ep_spec.address}:{ep_spec.port}")
        key = endpoint_key(ep_spec.address, ep_spec.port)
        if key in seen:
            raise CompileError(f"cluster {spec.name!r}: endpoint {key} listed twice")
        seen.add(key)
        state = registry.states.get((spec.name, key))
        if state is None:
            state = EndpointState(
                ep_spec.address,
                ep_spec.port,
                ep_spec.weight or 1,
                ep_spec.zone,
                ep_spec.version,
                dict(ep_spec.metadata),
                ep_spec.draining,
            )
            out.new_states[(spec.name, key)] = state
        else:
            out.endpoint_updates.append((state, ep_spec))
        endpoints.append(state)
        pushed.append((state, ep_spec))
    pool = spec.pool
    limits = (
        PoolLimits(
            max_connections=pool.max_connections or 1024,
            max_idle=pool.max_idle,
            idle_timeout=_ms(pool.idle_timeout_ms, 60_000),
            max_pending=pool.max_pending or 1024,
        )
        if spec.HasField("pool")
        else PoolLimits()
    )
    od = spec.outlier_detection
    outlier = OutlierPolicy(
        consecutive_failures=od.consecutive_failures or 5,
        consecutive_5xx=od.consecutive_5xx,
        base_ejection_s=_ms(od.base_ejection_ms, 30_000),
        max_ejection_s=_ms(od.max_ejection_ms, 300_000),
        max_ejection_percent=od.max_ejection_percent if spec.HasField("outlier_detection") else 50,
    )
    hc = spec.health_check if spec.HasField("health_check") else None
    if hc is not None and hc.type not in ("http", "tcp"):
        raise CompileError(f"cluster {spec.name!r}: unknown health_check type {hc.type!r}")
    affinity = None
    if spec.HasField("session_affinity") and spec.session_affinity.cookie:
        sa = spec.session_affinity
        affinity = Affinity(sa.cookie, sa.ttl_ms, sa.path or "/", AffinityIndex(endpoints))
        if endpoints:
            try:  # a bad cookie name or path would otherwise fail on every request
                affinity.index.set_cookie_header(sa.cookie, endpoints[0], sa.ttl_ms, affinity.path)
            except ValueError as exc:
                raise CompileError(f"cluster {spec.name!r}: session_affinity: {exc}") from None
    try:
        balancer = make_balancer(_LB[spec.lb], endpoints, [e.weight or 1 for _, e in pushed])
    except ValueError as exc:
        raise CompileError(f"cluster {spec.name!r}: {exc}") from None
    by_version = {
        version: make_balancer(
            _LB[spec.lb],
            [ep for ep, e in pushed if e.version == version],
            [e.weight or 1 for _, e in pushed if e.version == version],
        )
        for version in sorted({e.version for _, e in pushed if e.version})
    }
    zone_balancer = None
    if zone and spec.HasField("service") and spec.service.strategy == "prefer_zone":
        local = [ep for ep, e in pushed if e.zone == zone]
        if local and len(local) < len(endpoints):
            zone_balancer = make_balancer(_LB[spec.lb], local, [e.weight or 1 for _, e in pushed if e.zone == zone])
    upstream_tls = None
    if spec.HasField("tls") or spec.scheme == "https":
        try:
            upstream_tls = UpstreamTls.build(spec, certificates or {})
        except TlsConfigError as exc:
            raise CompileError(str(exc), Fault("cluster", spec.name)) from None
    if spec.protocol not in ("", "http1", "http2"):
        raise CompileError(f"cluster {spec.name!r}: protocol {spec.protocol!r}: use http1 or http2")
    return ClusterRuntime(
        tls=upstream_tls,
        protocol=spec.protocol or "http1",
        name=spec.name,
        endpoints=tuple(endpoints),
        balancer=balancer,
        pools={
            ep.key: (
                pools(spec.name, ep.address, ep.port, limits)
                if upstream_tls is None
                else pools(spec.name, ep.address, ep.port, limits, upstream_tls)  # type: ignore[call-arg]
            )
            for ep in endpoints
        },
        hash_on=_hash_key(spec),
        affinity=affinity,
        connect_timeout=_ms(spec.timeouts.connect_ms, 2_000),
        read_timeout=_ms(spec.timeouts.read_ms, 30_000),
        pool_limits=limits,
        health_check=hc,
        check_policy=ActiveCheckPolicy(
            healthy_threshold=(hc.healthy_threshold or 2) if hc else 2,
            unhealthy_threshold=(hc.unhealthy_threshold or 3) if hc else 3,
        ),
        outlier=outlier,
        scheme=spec.scheme or "http",
        keyed=bool(spec.hash_on) or _LB[spec.lb] == "ip_hash",
        max_requests=spec.pool.max_requests if spec.HasField("pool") else 0,
        by_version=by_version,
        zone_balancer=zone_balancer,
        state=registry.clusters.get(spec.name) or ClusterState(),
    )


def _route(spec: pb.Route, clusters: dict[str, ClusterRuntime]) -> RouteRuntime:
    if spec.cluster and spec.clusters:
        raise CompileError(f"route {spec.name!r}: both cluster and clusters given")
    split = [(spec.cluster, 1)] if spec.cluster else [(w.name, w.weight) for w in spec.clusters]
    if not split:
        raise CompileError(f"route {spec.name!r}: no cluster")
    targets = []
    for name, weight in split:
        if name not in clusters:
            raise CompileError(f"route {spec.name!r}: unknown cluster {name!r}")
        if weight <= 0:
            raise CompileError(f"route {spec.name!r}: weight of cluster {name!r} must be > 0")
        targets.append(clusters[name])
    path_type = _PATH_TYPE.get(spec.path_type)
    if path_type is None:
        raise CompileError(f"route {spec.name!r}: unknown path_type {spec.path_type}")
    retry = spec.retry if spec.HasField("retry") else None
    if retry is None:  # like nginx's proxy_next_upstream "error": safe failures go to another endpoint
        attempts, on_idem, on_other = 2, _DEFAULT_RETRY_ON, _CONNECT_ONLY
    else:
        attempts = 1 + retry.attempts
        on_idem = frozenset(retry.retry_on)
        on_other = on_idem if retry.retry_non_idempotent else on_idem & _CONNECT_ONLY
    return RouteRuntime(
        name=spec.name,
        clusters=tuple(targets),
        cumulative=tuple(accumulate(w for _, w in split)),
        timeout=spec.timeout_ms / 1000.0,
        retry=retry,
        match_prefix=_route_path(spec) if path_type == "prefix" else "",
        prefix_rewrite=spec.prefix_rewrite if spec.prefix_rewrite and path_type == "prefix" else None,
        host_rewrite=spec.host_rewrite.encode("idna") if spec.host_rewrite else None,
        attempts=attempts,
        retry_on_idempotent=on_idem,
        retry_on_other=on_other,
        grayscale=_grayscale(spec) if spec.HasField("grayscale") else None,
        grpc_web=spec.grpc_web,
    )


def _chain(
    names: Iterable[str], policies: dict[str, Policy], where: str, scope: str, head: PolicyChain = EMPTY_CHAIN
) -> PolicyChain:
    """The policies named by a resource (after `head`); scoped policies (breakers) bind to `scope`."""
    chosen = list(head.policies)
    for name in names:
        policy = policies.get(name)
        if policy is None:
            raise CompileError(f"{where}: unknown policy {name!r}")
        scoped = getattr(policy, "scoped", None)
        chosen.append(scoped(scope) if scoped is not None else policy)
    return PolicyChain(chosen) if chosen else EMPTY_CHAIN


def _grayscale(spec: pb.Route) -> GrayscalePlan:
    gs = spec.grayscale
    rules = [
        GrayRule(
            headers=tuple(sorted((k.lower(), v) for k, v in r.headers.items())),
            cookies=tuple(sorted(r.cookies.items())),
            consumer_group=r.consumer_group,
            version=r.version,
        )
        for r in gs.rules
    ]
    if gs.sticky_hash and gs.sticky_hash != "ip" and not gs.sticky_hash.startswith("header:"):
        raise CompileError(f"route {spec.name!r}: bad grayscale sticky hash {gs.sticky_hash!r}")
    return GrayscalePlan(
        dict(gs.versions),
        rules,
        sticky_cookie=gs.sticky_cookie,
        sticky_ttl_ms=gs.sticky_ttl_ms,
        sticky_hash=gs.sticky_hash,
    )


def compile_snapshot(
    snap: pb.Snapshot,
    registry: EndpointRegistry,
    pools: PoolFactory,
    env: PolicyEnv | None = None,
    *,
    zone: str = "",
) -> Compiled:
    try:
        check_snapshot(snap)  # nothing from config reaches the wire unchecked, even from a CP that let it by
    except ValueError as exc:
        raise CompileError(str(exc)) from None
    env = env or PolicyEnv()
    env.consumers = ConsumerIndex(snap.consumers)
    env.services.begin()
    out = Compiled(config=RuntimeConfig(version=snap.version, node_group=snap.node_group, snapshot=snap), env=env)
    try:
        policies = build_policies(snap.policies, env)
    except PolicyBuildError as exc:
        raise CompileError(str(exc)) from None
    global_names = sorted(p.name for p in snap.policies if p.is_global)
    certificates = {c.name: c for c in snap.certificates}
    clusters: dict[str, ClusterRuntime] = {}
    for c in snap.clusters:
        if c.name in clusters:
            raise CompileError(f"cluster {c.name!r} defined twice")
        runtime = _cluster(c, registry, pools, out, zone, certificates)
        if c.policies:
            runtime = replace(runtime, chain=_chain(c.policies, policies, f"cluster {c.name!r}", f"cluster:{c.name}"))
        clusters[c.name] = runtime

    routes: dict[str, tuple[pb.Route, RouteRuntime]] = {}
    for r in snap.routes:
        if r.name in routes:
            raise CompileError(f"route {r.name!r} defined twice")
        routes[r.name] = (r, _route(r, clusters))

    listeners: dict[str, ListenerRuntime] = {}
    sockets: dict[tuple[str, str, int], str] = {}
    for lst in snap.listeners:
        protocol = _PROTOCOL.get(lst.protocol)
        if protocol is None:
            raise CompileError(f"listener {lst.name!r}: unknown protocol {lst.protocol}")
        if lst.name in listeners:
            raise CompileError(f"listener {lst.name!r} defined twice")
        node_made = lst.name.startswith(NODE_LISTENER_PREFIX)
        rules = [
            RouteRule(
                name=r.name,
                hosts=tuple(h.lower() for h in r.hosts),
                path=_route_path(r),
                path_type=_PATH_TYPE[r.path_type],
                methods=frozenset(m.upper() for m in r.methods),
                headers=tuple(sorted((k.lower(), v) for k, v in r.headers.items())),
                priority=r.priority,
                target=_with_chain(runtime, r, lst, global_names, policies),
            )
            if protocol != "tls"
            else RouteRule(
                name=r.name,
                hosts=tuple(h.lower() for h in r.hosts),
                path="/",
                path_type="prefix",
                priority=r.priority,
                target=runtime,
            )
            for r, runtime in routes.values()
            if (protocol in ("http", "https") and (r.listener == lst.name or (not r.listener and not node_made)))
            or (protocol == "tls" and r.listener == lst.name)  # by SNI: routes that name the listener
        ]
        try:
            matcher = RouteMatcher(rules)
        except ValueError as exc:
            raise CompileError(f"listener {lst.name!r}: {exc}") from None
        cluster = None
        if protocol in ("tcp", "udp") or (protocol == "tls" and lst.cluster):
            cluster = clusters.get(lst.cluster)
            if cluster is None:
                raise CompileError(f"listener {lst.name!r}: unknown cluster {lst.cluster!r}")
        tls = None
        settings = _listener_settings(lst)
        if protocol == "https":
            try:
                alpn = ("h2", "http/1.1") if settings.http2 else ("http/1.1",)
                tls = TlsHolder(ServerTls.build(lst, certificates, alpn))
            except TlsConfigError as exc:
                raise CompileError(str(exc), Fault("listener", lst.name)) from None
        forward = None
        chain = EMPTY_CHAIN
        if lst.mode == pb.LISTENER_MODE_FORWARD:
            if protocol not in ("http", "https"):
                raise CompileError(f"listener {lst.name!r}: a forward proxy listener is http or https")
            try:
                forward = ForwardRules.build(lst.forward)
            except ValueError as exc:
                raise CompileError(f"listener {lst.name!r}: forward: {exc}") from None
            scope = f"listener:{lst.name}"
            chain = _chain(global_names, policies, "global policies", scope)
            chain = _chain(lst.policies, policies, f"listener {lst.name!r}", scope, chain)
        runtime = ListenerRuntime(
            lst.name,
            protocol,
            lst.address or "0.0.0.0",
            lst.port,
            matcher,
            cluster,
            settings,
            tls,
            forward,
            chain,
        )
        if runtime.socket_key in sockets:
            raise CompileError(
                f"listener {lst.name!r}: {runtime.socket_key[0]} {runtime.address}:{runtime.port} "
                f"is also listener {sockets[runtime.socket_key]!r}"
            )
        sockets[runtime.socket_key] = lst.name
        listeners[lst.name] = runtime
    for r, _ in routes.values():
        if r.listener and r.listener not in listeners:
            raise CompileError(f"route {r.name!r}: unknown listener {r.listener!r}")
    out.config = RuntimeConfig(
        version=snap.version,
        node_group=snap.node_group,
        snapshot=snap,
        listeners=listeners,
        clusters=clusters,
        policies=policies,
        consumers=env.consumers,
    )
    return out


def _route_path(route: pb.Route) -> str:
    """The route's path as requests are compared with it (exact and prefix paths canonical)."""
    path = route.path or "/"
    if _PATH_TYPE.get(route.path_type) == "regex":
        return path
    try:
        return canonical_route_path(path)
    except TargetError as exc:
        raise CompileError(f"route {route.name!r}: path {path!r}: {exc}") from None


def _listener_settings(lst: pb.Listener) -> ListenerSettings:
    t, lim, pn = lst.timeouts, lst.limits, lst.path_normalization
    for name in ("header_ms", "body_idle_ms", "idle_ms"):
        if getattr(t, name) > _MAX_TIMEOUT_MS:
            raise CompileError(f"listener {lst.name!r}: timeouts.{name.removesuffix('_ms')}: longer than a year")
    escaped = _ESCAPED_SLASHES.get(pn.escaped_slashes)
    if escaped is None:
        raise CompileError(f"listener {lst.name!r}: path_normalization: unknown escaped_slashes {pn.escaped_slashes}")
    return ListenerSettings(
        header_timeout=t.header_ms / 1000,
        body_idle_timeout=t.body_idle_ms / 1000,
        idle_timeout=t.idle_ms / 1000,
        max_connections=lim.max_connections,
        max_connections_per_ip=lim.max_connections_per_ip,
        path_rules=PathRules(
            merge_slashes=pn.merge_slashes if pn.HasField("merge_slashes") else True,
            escaped_slashes=escaped,
        ),
        # https listeners offer h2 by ALPN unless http2 is false; http listeners take h2c only with http2
        http2=lst.http2 if lst.HasField("http2") else lst.protocol == pb.PROTOCOL_HTTPS,
    )


def _with_chain(
    runtime: RouteRuntime, route: pb.Route, listener: pb.Listener, global_names: list[str], policies: dict[str, Policy]
) -> RouteRuntime:
    """The route as served on one listener: global, listener and route policies, in that order."""
    if not (global_names or listener.policies or route.policies):
        return runtime
    scope = f"route:{route.name}"
    chain = _chain(global_names, policies, "global policies", scope)
    chain = _chain(listener.policies, policies, f"listener {listener.name!r}", scope, chain)
    chain = _chain(route.policies, policies, f"route {route.name!r}", scope, chain)
    return replace(runtime, chain=chain)
