"""The FastAPI application: routers, error handlers and the body size limit."""

from __future__ import annotations

from fastapi import FastAPI

from controlplane.api import config, registry, registry_health, registry_sources, status, tokens, tunnel_sessions
from controlplane.api.errors import install_error_handlers
from controlplane.api.heartbeats import HeartbeatFastPath
from controlplane.api.json_default import JsonByDefault
from controlplane.api.limits import BodySizeLimit
from controlplane.api.resources import resource_router
from controlplane.api.state import ControlPlane
from controlplane.spec import KINDS

MAX_BODY = 1 << 20


def create_app(cp: ControlPlane) -> FastAPI:
    app = FastAPI(
        title="FLUX Gateway control plane",
        version="0.1.0",
        description="Config of the FLUX Gateway nodes: listeners, routes, clusters, policies, consumers, "
        "certificates and tunnels. Writes need `Authorization: Bearer <admin token>`.",
    )
    app.state.flux = cp
    install_error_handlers(app)
    app.include_router(registry_health.router)  # before the resource routers: /api/v1/alerts/status
    app.include_router(tunnel_sessions.router)  # before the resource routers: /api/v1/tunnels/sessions
    app.include_router(registry_sources.router)  # before the resource routers: /api/v1/registries/status
    for kind in KINDS.values():
        app.include_router(resource_router(kind))
    app.include_router(config.router)
    app.include_router(status.router)
    app.include_router(tokens.router)
    app.include_router(registry.router)
    app.add_middleware(JsonByDefault)  # `curl -d '{...}'` works without -H 'content-type: ...'
    app.add_middleware(BodySizeLimit, limit=MAX_BODY)
    app.add_middleware(HeartbeatFastPath)  # outermost: heartbeats skip FastAPI's routing
    return app
