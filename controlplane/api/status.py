"""Nodes, health and metrics endpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from controlplane.api.state import ControlPlane, get_cp
from fluxcommon.tracing.metrics import trace_metric_families

router = APIRouter()


@router.get("/api/v1/nodes", tags=["nodes"], summary="Data-plane nodes: group, address, acked version, last NACK")
def list_nodes(cp: ControlPlane = Depends(get_cp)) -> dict[str, Any]:
    version = cp.store.db_version()
    nodes = [n.as_dict(_expected(cp, version, n.node_group)) for n in cp.nodes.list()]
    return {"items": nodes, "total": len(nodes), "version": version}


def _expected(cp: ControlPlane, version: int, group: str) -> str:
    """The snapshot version a node of `group` should hold now ("42", or "42.1037" with registry services)."""
    if cp.cache.ready and cp.cache.version == version:
        return cp.cache.group_version(group)
    return str(version)


@router.get("/api/v1/nodes/{node_id:path}", tags=["nodes"], summary="One node")
def get_node(node_id: str, cp: ControlPlane = Depends(get_cp)) -> Any:
    version = cp.store.db_version()
    for n in cp.nodes.list():
        if n.node_id == node_id:
            return n.as_dict(_expected(cp, version, n.node_group))
    return JSONResponse({"error": "not_found", "message": f"node {node_id!r} not known"}, status_code=404)


@router.get("/healthz", tags=["status"], summary="Liveness and database reachability")
def healthz(cp: ControlPlane = Depends(get_cp)) -> Any:
    try:
        version = cp.store.db_version()
    except Exception as exc:
        return JSONResponse({"status": "error", "database": str(exc)[:200]}, status_code=503)
    return {
        "status": "ok",
        "version": version,
        "published_version": cp.cache.version,
        "control_plane": cp.control_plane_id,
    }


class _Collector:
    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp

    def collect(self) -> Any:
        cp = self.cp
        yield GaugeMetricFamily("flux_config_version", "Config version published to nodes", value=cp.cache.version)
        writes = CounterMetricFamily("flux_config_writes", "Committed config writes through this process")
        writes.add_metric([], cp.counters.get("config_writes", 0))
        yield writes
        nodes = GaugeMetricFamily("flux_nodes", "Nodes known to this control plane", labels=["group", "state"])
        counts: dict[tuple[str, str], int] = {}
        for n in cp.nodes.list():
            key = (n.node_group, "connected" if n.connected else "disconnected")
            counts[key] = counts.get(key, 0) + 1
        for (group, state), count in sorted(counts.items()):
            nodes.add_metric([group, state], count)
        yield nodes
        if cp.servicer is not None:
            pushes = CounterMetricFamily("flux_discovery_pushes", "Snapshots sent to nodes")
            pushes.add_metric([], cp.servicer.pushes)
            yield pushes
            yield GaugeMetricFamily("flux_discovery_streams", "Open config streams", value=cp.servicer.active_streams)
        yield GaugeMetricFamily(
            "flux_snapshot_render_seconds",
            "Duration of the last snapshot render",
            value=cp.cache.last_render_ms / 1000,
        )
        renders = CounterMetricFamily("flux_snapshot_renders", "Snapshots rendered")
        renders.add_metric([], cp.cache.renders)
        yield renders
        yield from trace_metric_families(cp.tracing.exporter if cp.tracing is not None else None)


@router.get("/metrics", tags=["status"], summary="Prometheus metrics")
def metrics(request: Request, cp: ControlPlane = Depends(get_cp)) -> PlainTextResponse:
    registry = CollectorRegistry()
    registry.register(_Collector(cp))  # type: ignore[arg-type]
    if cp.registry is not None:
        from controlplane.api.registry import RegistryCollector

        registry.register(RegistryCollector(cp.registry))  # type: ignore[arg-type]
        from controlplane.api.registry_health import HealthCollector

        registry.register(HealthCollector(request.app.state))  # type: ignore[arg-type]
    sources = getattr(request.app.state, "registry_sources", None)
    if sources is not None:  # external registry adapters: flux_registry_source_*
        registry.register(sources)
    return PlainTextResponse(generate_latest(registry), media_type="text/plain; version=0.0.4")


# HEAD as well as GET (load balancers and uptime checkers probe with HEAD); left out of the schema,
# where it would repeat the GET operation
router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/metrics", metrics, methods=["HEAD"], include_in_schema=False)
