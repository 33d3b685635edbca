"""The FastAPI application: routers, error handlers and the body size limit."""

from __future__ import annotations

from fastapi import Depends, FastAPI

from controlplane.api import (
    api_tokens,
    config,
    index,
    nodes,
    registry,
    registry_health,
    registry_sources,
    rollouts,
    service_info,
    status,
    tokens,
    tunnel_agent_config,
    tunnel_sessions,
)
from controlplane.api.access import AccessGuard, authorize
from controlplane.api.errors import install_error_handlers
from controlplane.api.heartbeats import HeartbeatFastPath
from controlplane.api.json_default import JsonByDefault
from controlplane.api.limits import BodySizeLimit
from controlplane.api.resources import resource_router
from controlplane.api.state import ControlPlane
from controlplane.spec import KINDS
from controlplane.tracing import WriteTracing
from controlplane.ui import install as install_console

MAX_BODY = 1 << 20


def create_app(cp: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="FLUX Gateway control plane",
        version="0.1.0",
        description="Config of the FLUX Gateway nodes: listeners, routes, clusters, policies, consumers, "
        "certificates and tunnels. Every `/api/v1` call needs `Authorization: Bearer <token>`: the admin "
        "token, or an API token with the role `read`, `registry` or `admin` (`POST /api/v1/tokens`).",
        dependencies=[Depends(authorize)],  # every route: 401 without a token, 403 without the role
        docs_url=None,  # /docs and /redoc: controlplane.ui.docs, with no asset from a CDN
        redoc_url=None,
    )
    app.state.flux = cp
    install_error_handlers(app)
    app.include_router(registry_health.router)  # before the resource routers: /api/v1/alerts/status
    app.include_router(tunnel_sessions.router)  # before the resource routers: /api/v1/tunnels/sessions
    app.include_router(tunnel_agent_config.router)  # POST /api/v1/tunnels/{name}/agent-config (admin)
    app.include_router(registry_sources.router)  # before the resource routers: /api/v1/registries/status
    for kind in KINDS.values():
        app.include_router(resource_router(kind))
    app.include_router(config.router)
    app.include_router(rollouts.router)  # /api/v1/rollouts, /api/v1/config/versions/{v}/nodes
    app.include_router(nodes.router)  # before status: /api/v1/nodes/join-tokens is no node id
    app.include_router(status.router)
    app.include_router(tokens.router)
    app.include_router(api_tokens.router)
    app.include_router(registry.router)
    app.include_router(index.router)  # GET /api/v1: the kinds and the other collections
    app.include_router(service_info.router)  # GET /api/v1/service/info: what the gateway serves now
    install_console(app)  # the web console at /ui/ and the local Swagger UI at /docs
    app.add_middleware(JsonByDefault)  # `curl -d '{...}'` works without -H 'content-type: ...'
    app.add_middleware(BodySizeLimit, limit=MAX_BODY)
    app.add_middleware(HeartbeatFastPath)  # heartbeats skip FastAPI's routing
    if cp.tracing is not None:  # a span per config write, the parent of its publish and pushes
        app.add_middleware(WriteTracing, tracing=cp.tracing)
    app.add_middleware(AccessGuard)  # outermost: no /api/v1 request goes on without a valid token
    return app
