"""`GET /api/v1/service/info`: what this gateway serves right now, each part with its live state.

One answer for "what is up": listeners by protocol, routes with their clusters, the TCP/UDP
and gRPC entry points, clusters with where their endpoints come from, tunnels with their
live sessions, and node groups with their nodes. A part's `state` is its node group's:

- `serving`: every connected node of the group holds the version the group should run;
- `syncing`: some connected node does not hold it yet (and has refused nothing);
- `refused`: a connected node refused (NACKed) that version: the message says why;
- `no_nodes`: no node of the group is connected, so nothing serves it.

A route without a listener is served by every http(s) listener; its state is the best of
their groups'. Registry-backed clusters count their healthy instances, tunnel clusters the
agents serving them (what the control plane sees; per-node endpoint health is on each node's
`/clusters`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from controlplane.api.state import ControlPlane, get_cp
from controlplane.spec import ClusterSpec, ConfigSet, ListenerSpec, RouteSpec, TunnelSpec

router = APIRouter(prefix="/api/v1/service", tags=["status"])

_RANK = {"serving": 3, "syncing": 2, "refused": 1, "no_nodes": 0}


def _group_state(nodes: list[dict[str, Any]], expected: str) -> str:
    connected = [n for n in nodes if n["connected"]]
    if not connected:
        return "no_nodes"
    if all(n["acked_version"] == expected for n in connected):
        return "serving"
    if any((n.get("last_nack") or {}).get("version") == expected for n in connected):
        return "refused"
    return "syncing"


def _groups(cp: ControlPlane, cfg: ConfigSet, version: int) -> dict[str, dict[str, Any]]:
    named = {x.node_group for x in cfg["listeners"].values() if isinstance(x, ListenerSpec)}
    named |= {t.node_group for t in cfg["tunnels"].values() if isinstance(t, TunnelSpec)}
    states = cp.nodes.list()
    out: dict[str, dict[str, Any]] = {}
    for group in sorted(named | {n.node_group for n in states}):
        expected = cp.cache.group_version(group) if cp.cache.ready and cp.cache.version == version else str(version)
        nodes = [n.as_dict(expected) for n in states if n.node_group == group]
        out[group] = {
            "state": _group_state(nodes, expected),
            "version": expected,
            "nodes": [
                {k: n.get(k) for k in ("id", "address", "connected", "acked_version", "in_sync", "last_nack")}
                for n in nodes
            ],
        }
    return out


def _endpoints(cp: ControlPlane, c: ClusterSpec, tunnel_agents: dict[str, int]) -> dict[str, Any]:
    if c.service is not None:
        found: dict[str, Any] = {"service": c.service.name, "instances": 0, "healthy": 0}
        if cp.registry is not None:
            instances = cp.registry.select(c.service.name, healthy=None, tags=list(c.service.tags),
                                           version=c.service.version, zone=c.service.zone)  # fmt: skip
            found["instances"] = len(instances)
            found["healthy"] = sum(1 for i in instances if i.serves)
        return found
    if c.tunnel:
        return {"tunnel": c.tunnel, "agents": tunnel_agents.get(c.tunnel, 0)}
    return {"endpoints": [f"{e.address}:{e.port}" + (f"*{e.weight}" if e.weight != 1 else "") for e in c.endpoints]}


def _best(states: list[str]) -> str:
    return max(states, key=lambda s: _RANK[s]) if states else "no_nodes"


@router.get("/info", summary="What the gateway serves now: listeners, routes, TCP/UDP/gRPC, node groups, live state")
def service_info(cp: ControlPlane = Depends(get_cp)) -> dict[str, Any]:
    version, cfg = cp.store.current()
    groups = _groups(cp, cfg, version)
    state = {g: v["state"] for g, v in groups.items()}
    listeners = sorted((x for x in cfg["listeners"].values() if isinstance(x, ListenerSpec)), key=lambda x: x.name)
    routes = sorted((r for r in cfg["routes"].values() if isinstance(r, RouteSpec)), key=lambda r: r.name)
    clusters: dict[str, ClusterSpec] = {n: c for n, c in cfg["clusters"].items() if isinstance(c, ClusterSpec)}
    http_groups = [x.node_group for x in listeners if x.protocol in ("http", "https")]
    sessions = cp.tunnel_sessions.sessions()
    agents: dict[str, int] = {}  # proxy name (or load-balancing group) -> live agent sessions serving it
    for session in sessions:
        for proxy in session["proxies"]:
            for name in {proxy["name"], proxy.get("group") or proxy["name"]}:
                agents[name] = agents.get(name, 0) + 1

    by_protocol: dict[str, list[dict[str, Any]]] = {}
    for x in listeners:
        entry = {
            "name": x.name,
            "address": f"{x.address}:{x.port}",
            "node_group": x.node_group,
            "state": state.get(x.node_group, "no_nodes"),
            "routes": [r.name for r in routes if r.listener == x.name or (not r.listener and x.protocol != "tcp")],
        }
        if x.cluster:
            entry["cluster"] = x.cluster
        by_protocol.setdefault(x.protocol, []).append(entry)

    route_out, grpc = [], []
    for r in routes:
        lst = cfg.get("listeners", r.listener) if r.listener else None
        route_groups = [lst.node_group] if isinstance(lst, ListenerSpec) else http_groups
        entry = {
            "name": r.name,
            "listener": r.listener or "*",
            "hosts": list(r.hosts) or ["*"],
            "path": r.path,
            "path_type": r.path_type,
            "clusters": [{"name": r.cluster, "weight": 100}] if r.cluster else [c.model_dump() for c in r.clusters],
            "state": _best([state.get(g, "no_nodes") for g in route_groups]),
        }
        route_out.append(entry)
        h2 = [n for n in r.cluster_names() if n in clusters and clusters[n].protocol == "http2"]
        if h2:
            grpc.append({"route": r.name, "path": r.path, "clusters": h2, "grpc_web": r.grpc_web,
                         "state": entry["state"]})  # fmt: skip

    layer4 = {proto: [_layer4(cp, x, state, clusters, agents) for x in listeners if x.protocol == proto]
              for proto in ("tcp", "udp")}  # fmt: skip
    tunnels = sorted((t for t in cfg["tunnels"].values() if isinstance(t, TunnelSpec)), key=lambda t: t.name)
    return {
        "version": version,
        "listeners": by_protocol,
        "routes": route_out,
        "tcp": layer4["tcp"],
        "udp": layer4["udp"],
        "grpc": grpc,
        "clusters": [
            {"name": c.name, "lb": c.lb, "protocol": c.protocol, **_endpoints(cp, c, agents)}
            for c in sorted(clusters.values(), key=lambda c: c.name)
        ],
        "tunnels": [_tunnel(t, state, sessions) for t in tunnels],
        "node_groups": groups,
    }


def _layer4(
    cp: ControlPlane, x: ListenerSpec, state: dict[str, str], clusters: dict[str, ClusterSpec], agents: dict[str, int]
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "listener": x.name,
        "address": f"{x.address}:{x.port}",
        "cluster": x.cluster,
        "state": state.get(x.node_group, "no_nodes"),
    }
    if x.cluster in clusters:
        entry.update(_endpoints(cp, clusters[x.cluster], agents))
    return entry


def _tunnel(t: TunnelSpec, state: dict[str, str], sessions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": t.name,
        "node_group": t.node_group,
        "bind_port": t.bind_port,
        "state": state.get(t.node_group, "no_nodes"),
        "sessions": sum(1 for x in sessions if x["tunnel"] == t.name),
    }
