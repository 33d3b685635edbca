"""Status of the external registry sources (`registries` resources) and their metrics.

    GET /api/v1/registries/status          every source: state, last sync, imported counts, last error
    GET /api/v1/registries/{name}/status   one source (404 when no such resource)
    GET /api/v1/registries/metrics         the sources' Prometheus metrics

The resources themselves are written through the generic resource API (`/api/v1/registries`).
Included before the resource routers, so `/api/v1/registries/status` is not read as a
resource named "status". States: `running` (connected, in sync), `connecting`, `error` (the
last attempt failed, retrying; see `last_error`), `failed` (the adapter cannot start),
`standby` (another control plane holds the registry leader lease and runs the adapters),
`starting`. Reads need a token with the read role (controlplane.api.access).
"""

# No `from __future__ import annotations`: FastAPI reads the parameter types at runtime.

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest

from controlplane.registry.adapters.manager import RegistrySourceManager

router = APIRouter(prefix="/api/v1/registries", tags=["registries"])


def get_sources(request: Request) -> RegistrySourceManager:
    manager = getattr(request.app.state, "registry_sources", None)
    if manager is None:
        raise HTTPException(503, "the external registry adapters are not running")
    return manager  # type: ignore[no-any-return]


@router.get("/status", summary="State of every external registry source")
async def sources_status(request: Request) -> dict[str, Any]:
    return get_sources(request).status()


@router.get("/metrics", summary="Prometheus metrics of the external registry sources")
async def sources_metrics(request: Request) -> PlainTextResponse:
    registry = CollectorRegistry()
    registry.register(get_sources(request))  # type: ignore[arg-type]
    return PlainTextResponse(generate_latest(registry), media_type="text/plain; version=0.0.4")


@router.get("/{name}/status", summary="State of one external registry source")
async def source_status(name: str, request: Request) -> dict[str, Any]:
    found = get_sources(request).source_status(name)
    if found is None:
        raise HTTPException(404, f"registry {name!r} not found")
    return found
